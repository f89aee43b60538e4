"""Prepared tables: one builder per dataset, from fetched sources to `data/prepared/<dataset>.parquet`.

Every table has the schema of its kind (docs/contracts.md) and holds only what comes with the data:

- training pairs: `instruction, input, output`
- triplets:       `subset, anchor, positive, negative`
- clustering:     `subset, text, label` (labels are strings)
- instructed pairs: `subset, text1, text2, score` (float)

`subset` names the view or set a row belongs to (`default` where the data has one). An evaluation
table carries an `instruction` column (after `subset`) only where the data itself has one
(InstructSTSB); every other instruction is the task's, resolved from config by rule task_table into
`results/<run>/tasks/<task>.parquet` (`inbedder.task_kinds`), so a changed instruction never rebuilds a
prepared table.

Datasets (their sources are in `DATASET_SOURCES`):

- `inbedder_qa`, `alpaca` (hub, training pairs). `inbedder_qa_heldout` is a seeded sample of
  `HELDOUT_ROWS` QA rows, removed from `inbedder_qa`.
- `c3_qa` (offline InBedder recipe): C3 train; instruction = question, input = passage, output = the
  answer with stopwords removed (`inbedder.text.remove_stopwords`, scikit-learn's English list); rows
  whose answer is nothing but stopwords are dropped. `c3_qa_heldout`: `HELDOUT_ROWS` rows of C3
  *validation*, same processing, in a seeded random order (so any prefix is a random sample).
- `alpaca_5k` (offline Alpaca recipe): the 5,000 mirrored Alpaca rows as they are, less the 2 rows
  with an empty output (rows without an instruction or output are dropped from every training set).
- `intent_emotion`, `nyt_clustering`, `instruct_stsb` (hub, test split): the paper's sets as released
  (InstructSTSB with the instruction of each pair, subset `default`).
- NLU++ banking analogs (built in `inbedder.analogs`, as are the generic sets below). The 542
  utterances carrying exactly one action intent and exactly one object intent (lists in
  `NLUPP_ACTIONS`, `NLUPP_OBJECTS`) are read in fold order (fold0..fold19, file order).
  Each utterance has two labels, one per *view* (`action`, `object`).
  - `nlupp_clustering`: subsets `action` and `object`; all 542 texts, label = that view's label.
  - `nlupp_triplets` (IntentEmotion-like): one triplet per distinct utterance (537), anchors visited
    in a seeded random order. For the anchor, a positive P is drawn (seeded, uniformly) among
    utterances with the same action and a different object, and a negative N among utterances with
    the same object and a different action. Subset `action` holds (anchor, P, N); subset `object`
    holds the mirror (anchor, N, P): there N shares the object and not the action, P the action and
    not the object. An embedder that ignores the instruction ranks P against N the same way under
    both, so its two success rates sum to exactly 100% (ties aside).
  - `nlupp_pairs` (InstructSTSB-like): `NLUPP_PAIRS_PER_VIEW` distinct unordered pairs sharing the
    action but not the object, and as many sharing the object but not the action (anchors in a seeded
    random order, one uniformly drawn partner each, repeated pairs skipped). Each pair appears twice:
    in the subset of the shared view with score 1, in the other view's with score 0 (each scored under
    its subset's instruction), so an instruction-agnostic embedder has Spearman ~0.
- `twenty_newsgroups`: the TwentyNewsgroupsClustering table of MTEB ("Clustering of the 20 Newsgroups
  dataset (subject only)"): the `Subject:` header of every post of the bydate archive (train + test,
  18,846 posts, decoded as latin-1, replies keep their "Re:"), label = newsgroup. As in MTEB, 10
  cluster sets, each a seeded sample without replacement of between 1,000 and 10,000 subjects; the
  `subset` column is the set id ("0".."9").
- `stsb`: STS Benchmark test (1,379 pairs), score 0-5; only the first seven tab-separated fields of a
  line are read (some lines carry extra trailing columns).
- `banking77`: Banking77 test (3,080 texts, 77 intents) as one clustering set, subset `default`.

All randomness comes from `numpy.random.default_rng(seed)` with `seed = SEED` unless a builder is
called with another one, so two runs give identical tables.
"""

from __future__ import annotations

import functools
import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inbedder.analogs import (
    build_banking77,
    build_nlupp_clustering,
    build_nlupp_pairs,
    build_nlupp_triplets,
    build_stsb,
    build_twenty_newsgroups,
)
from inbedder.files import atomic_path, write_jsonl
from inbedder.raw import (
    SEED,
    DataError,
    check_records,
    is_bad_text,
    read_json,
    read_json_lines,
    read_parquet,
    sample_order,
)
from inbedder.source_registry import load_sources
from inbedder.sources import read_manifest
from inbedder.text import remove_stopwords

log = logging.getLogger(__name__)

HELDOUT_ROWS = 300

SCHEMAS: dict[str, tuple[str, ...]] = {
    "training": ("instruction", "input", "output"),
    "triplets": ("subset", "anchor", "positive", "negative"),
    "clustering": ("subset", "text", "label"),
    "pairs": ("subset", "text1", "text2", "score"),
}
# An evaluation table keeps this column, after `subset`, where the data has an instruction per row.
DATA_INSTRUCTION = "instruction"
# Columns that may hold an empty string (Alpaca rows without an input).
MAY_BE_EMPTY = frozenset({"input"})

Builder = Callable[..., pd.DataFrame]


# ----------------------------------------------------------------------------------------------
# Training pairs


def _c3_rows(data: bytes, label: str) -> pd.DataFrame:
    records = read_json_lines(data, label)
    check_records(records, ("key", "value", "value_prefix"), label)
    table = pd.DataFrame(
        {
            "instruction": [r["value"] for r in records],
            "input": [r["key"] for r in records],
            "output": [remove_stopwords(r["value_prefix"]) for r in records],
        }
    )
    empty = table["output"] == ""
    if empty.any():
        log.info("%s: %d of %d answers are only stopwords; dropped", label, int(empty.sum()), len(table))
    return table[~empty].reset_index(drop=True)


def build_c3_qa(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """C3 train as QA training pairs, answers with stopwords removed (the InBedder recipe, offline)."""
    archive = raw["c3"] / "c3.zip"
    member = "c3.train.en.jsonl"
    with zipfile.ZipFile(archive) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(f"{archive}: member {member!r} missing (has {zf.namelist()})")
        data = zf.read(member)
    return _c3_rows(data, f"{archive}:{member}")


def build_c3_qa_heldout(raw: Mapping[str, Path], seed: int = SEED, rows: int = HELDOUT_ROWS) -> pd.DataFrame:
    """A seeded sample of C3 validation QA pairs (never trained on), for the training check."""
    path = raw["c3"] / "c3.validation.en.jsonl"
    table = _c3_rows(path.read_bytes(), str(path))
    return table.iloc[sample_order(len(table), rows, seed)].reset_index(drop=True)


def build_alpaca_5k(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """The mirrored 5,000 Alpaca rows as training pairs (the Alpaca recipe, offline)."""
    path = raw["alpaca_5000"] / "alpaca_5000.json"
    records = read_json(path.read_bytes(), str(path))
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    check_records(records, SCHEMAS["training"], str(path))
    return _drop_unanswered(
        pd.DataFrame({c: [r[c] for r in records] for c in SCHEMAS["training"]}), str(path)
    )


def _drop_unanswered(table: pd.DataFrame, label: str) -> pd.DataFrame:
    """Drop training rows without an instruction or an output (nothing to learn from); log how many."""
    empty = (table["instruction"].astype(str).str.strip() == "") | (
        table["output"].astype(str).str.strip() == ""
    )
    if empty.any():
        log.info(
            "%s: %d of %d rows have an empty instruction or output; dropped",
            label,
            int(empty.sum()),
            len(table),
        )
    return table[~empty].reset_index(drop=True)


def _hub_training(raw_dir: Path) -> pd.DataFrame:
    path = raw_dir / "default" / "train.parquet"
    table = read_parquet(path, SCHEMAS["training"])
    return _drop_unanswered(table[list(SCHEMAS["training"])].reset_index(drop=True), str(path))


def build_inbedder_qa(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """The InBedder QA pre-training data (hub), less the rows held out for the training check."""
    table = _hub_training(raw["inbedder_qa"])
    held = set(sample_order(len(table), HELDOUT_ROWS, seed).tolist())
    keep = [i for i in range(len(table)) if i not in held]
    return table.iloc[keep].reset_index(drop=True)


def build_inbedder_qa_heldout(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """A seeded sample of the InBedder QA data, held out from `inbedder_qa`."""
    table = _hub_training(raw["inbedder_qa"])
    return table.iloc[sample_order(len(table), HELDOUT_ROWS, seed)].reset_index(drop=True)


def build_alpaca(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """Full Alpaca (hub) as training pairs."""
    return _hub_training(raw["alpaca_full"])


# ----------------------------------------------------------------------------------------------
# The paper's evaluation sets (hub)


def build_intent_emotion(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """IntentEmotion triplets, subsets emotion and intent."""
    parts = []
    for subset in ("emotion", "intent"):
        t = read_parquet(raw["intent_emotion"] / subset / "test.parquet", ("anchor", "positive", "negative"))
        parts.append(
            pd.DataFrame(
                {
                    "subset": subset,
                    "anchor": t["anchor"].astype(str),
                    "positive": t["positive"].astype(str),
                    "negative": t["negative"].astype(str),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def build_nyt_clustering(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """NYTClustering, subsets topic and location."""
    parts = []
    for subset in ("topic", "location"):
        t = read_parquet(raw["nyt_clustering"] / subset / "test.parquet", ("text", "cluster"))
        parts.append(
            pd.DataFrame(
                {
                    "subset": subset,
                    "text": t["text"].astype(str),
                    "label": t["cluster"].astype(str),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def build_instruct_stsb(raw: Mapping[str, Path], seed: int = SEED) -> pd.DataFrame:
    """InstructSTSB pairs, one subset; the instruction of each pair comes with the data."""
    t = read_parquet(
        raw["instruct_stsb"] / "default" / "test.parquet", ("sentence1", "sentence2", "instruction", "score")
    )
    return pd.DataFrame(
        {
            "subset": "default",
            "instruction": t["instruction"].astype(str),
            "text1": t["sentence1"].astype(str),
            "text2": t["sentence2"].astype(str),
            "score": t["score"].astype(float),
        }
    )


# ----------------------------------------------------------------------------------------------
# Registry, validation and the two entry points of the rules


@dataclass(frozen=True)
class DatasetSpec:
    """A prepared dataset: its kind, its sources and its builder."""

    name: str
    kind: str
    sources: tuple[str, ...]
    builder: Builder


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("inbedder_qa", "training", ("inbedder_qa",), build_inbedder_qa),
        DatasetSpec("inbedder_qa_heldout", "training", ("inbedder_qa",), build_inbedder_qa_heldout),
        DatasetSpec("alpaca", "training", ("alpaca_full",), build_alpaca),
        DatasetSpec("c3_qa", "training", ("c3",), build_c3_qa),
        DatasetSpec("c3_qa_heldout", "training", ("c3",), build_c3_qa_heldout),
        DatasetSpec("alpaca_5k", "training", ("alpaca_5000",), build_alpaca_5k),
        DatasetSpec("intent_emotion", "triplets", ("intent_emotion",), build_intent_emotion),
        DatasetSpec("nyt_clustering", "clustering", ("nyt_clustering",), build_nyt_clustering),
        DatasetSpec("instruct_stsb", "pairs", ("instruct_stsb",), build_instruct_stsb),
        DatasetSpec("nlupp_triplets", "triplets", ("nlupp",), build_nlupp_triplets),
        DatasetSpec("nlupp_clustering", "clustering", ("nlupp",), build_nlupp_clustering),
        DatasetSpec("nlupp_pairs", "pairs", ("nlupp",), build_nlupp_pairs),
        DatasetSpec("twenty_newsgroups", "clustering", ("twenty_newsgroups",), build_twenty_newsgroups),
        DatasetSpec("stsb", "pairs", ("stsb",), build_stsb),
        DatasetSpec("banking77", "clustering", ("banking77",), build_banking77),
    )
}
DATASET_SOURCES: dict[str, tuple[str, ...]] = {name: spec.sources for name, spec in DATASETS.items()}


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of a prepared dataset, with a clear error for an unknown name."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r} (known: {sorted(DATASETS)})")
    return DATASETS[name]


@functools.cache
def hub_only_datasets() -> frozenset[str]:
    """Prepared datasets whose every source is hub-only (unavailable offline). Read once per process: the
    workflow asks for every task while it builds its DAG."""
    registry = load_sources()
    return frozenset(n for n, s in DATASETS.items() if all(registry[src].hub_only for src in s.sources))


def heldout_dataset(offline: bool) -> str:
    """The held-out QA dataset of the training check: C3 validation offline, hub QA data otherwise."""
    return "c3_qa_heldout" if offline else "inbedder_qa_heldout"


def source_manifests(dataset: str, raw_root: str = "data/raw") -> list[str]:
    """Manifest paths of the sources a prepared dataset is built from (a rule's inputs)."""
    return [f"{raw_root}/{source}/manifest.json" for source in dataset_spec(dataset).sources]


def training_inputs(
    recipe: str, recipes: Mapping[str, Mapping[str, Any]], offline: bool, prepared_root: str = "data/prepared"
) -> dict[str, str]:
    """Prepared tables of a recipe: its training dataset and the held-out QA set of the training check."""
    if recipe not in recipes:
        raise ValueError(f"recipe {recipe!r} is not a key of recipes (known: {sorted(recipes)})")
    dataset = recipes[recipe].get("dataset")
    if dataset not in DATASETS or DATASETS[dataset].kind != "training":
        training = sorted(n for n, d in DATASETS.items() if d.kind == "training")
        raise ValueError(
            f"recipes.{recipe}.dataset: {dataset!r} is not a training dataset (known: {training})"
        )
    return {
        "train": f"{prepared_root}/{dataset}.parquet",
        "heldout": f"{prepared_root}/{heldout_dataset(offline)}.parquet",
    }


def validate_table(table: pd.DataFrame, kind: str, label: str) -> pd.DataFrame:
    """Check a prepared table against the schema of its kind; return it with exactly those columns (and the
    data's own `instruction` column, where an evaluation table has one)."""
    if kind not in SCHEMAS:
        raise ValueError(f"{label}: unknown table kind {kind!r} (known: {sorted(SCHEMAS)})")
    columns = SCHEMAS[kind]
    if kind != "training" and DATA_INSTRUCTION in table.columns:
        columns = (columns[0], DATA_INSTRUCTION, *columns[1:])
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{label}: column {missing[0]!r} missing (has {list(table.columns)})")
    if table.empty:
        raise DataError(f"{label}: empty dataset (no rows)")
    table = table[list(columns)].reset_index(drop=True)
    for col in columns:
        if table[col].isna().any():
            raise DataError(
                f"{label}: column {col!r}, row {int(table[col].isna().to_numpy().argmax())}: missing value"
            )
        if col == "score":
            table[col] = table[col].astype("float64")
            continue
        values = table[col].astype(str)
        bad = values.map(is_bad_text)
        if bad.any():
            raise DataError(
                f"{label}: column {col!r}, row {int(bad.to_numpy().argmax())}: text is not valid UTF-8"
            )
        if col not in MAY_BE_EMPTY:
            blank = values.str.strip() == ""
            if blank.any():
                raise DataError(f"{label}: column {col!r}, row {int(blank.to_numpy().argmax())}: empty text")
        table[col] = values
    return table


def prepare(
    dataset: str,
    raw_root: str | os.PathLike,
    out_path: str | os.PathLike,
) -> pd.DataFrame:
    """Build `data/prepared/<dataset>.parquet` from the fetched sources under `raw_root`."""
    spec = dataset_spec(dataset)
    raw = {}
    for source in spec.sources:
        raw[source] = Path(raw_root) / source
        read_manifest(raw[source])
    table = validate_table(spec.builder(raw), spec.kind, f"dataset {dataset!r}")
    with atomic_path(out_path) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("%s: %d rows -> %s", dataset, len(table), out_path)
    return table


def read_prepared(path: str | os.PathLike, kind: str) -> pd.DataFrame:
    """Read a prepared table and check it has the schema of `kind`."""
    return validate_table(pd.read_parquet(path), kind, str(path))


def write_training_tables(
    train_path: str | os.PathLike,
    heldout_path: str | os.PathLike,
    out_train: str | os.PathLike,
    out_heldout: str | os.PathLike,
    train_rows: int | None = None,
    heldout_rows: int | None = None,
    seed: int = SEED,
) -> tuple[int, int]:
    """Write `results/<run>/train/<recipe>.jsonl` and `<recipe>.heldout.jsonl` from prepared tables; return row counts."""
    train = read_prepared(train_path, "training")
    heldout = read_prepared(heldout_path, "training")
    for key, value in (("limits.train_rows", train_rows), ("limits.heldout_rows", heldout_rows)):
        if value is not None and value < 1:
            raise ValueError(f"{key}: {value} must be a positive number of rows or null")
    held_keys = set(zip(heldout["instruction"], heldout["input"]))
    overlap = [k in held_keys for k in zip(train["instruction"], train["input"])]
    if any(overlap):
        log.info("%s: %d rows also in the held-out set; dropped from training", train_path, sum(overlap))
        train = train[[not o for o in overlap]].reset_index(drop=True)
    if train_rows is not None and train_rows < len(train):
        keep = np.sort(sample_order(len(train), train_rows, seed))
        train = train.iloc[keep].reset_index(drop=True)
    if heldout_rows is not None:
        heldout = heldout.head(heldout_rows)
    write_jsonl(out_train, train.to_dict("records"))
    write_jsonl(out_heldout, heldout.to_dict("records"))
    return len(train), len(heldout)
