"""One class per task kind: its table, the prompts it needs, how it is scored and its main metric.

A task is a config entry `tasks.<name>` with a `kind`; `kind_of(name, spec)` gives its class:
- `triplets`   prepared table `subset, anchor, positive, negative` (IntentEmotion-like);
- `clustering` prepared table `subset, text, label` (NYT-like; each subset one view);
- `pairs`      prepared table `subset, text1, text2, score` (InstructSTSB-like; InstructSTSB's own
               `instruction` per pair is kept where the config names none);
- `robustness` one subset of a clustering table scored under 10 correct, 10 implicit and 10 incorrect
               instructions (`instructions: {correct: [...], implicit: [...], incorrect: [...]}`);
- `own`        a local CSV or JSONL (`path`, `text_column`, optional `label_column`, `instructions`, `k`);
- `mteb`       an mteb task (`mteb_task`, default the task's name); with `dataset` set, the prepared
               table replaces mteb's own loading (clustering schema for clustering tasks, each
               `subset` one cluster set; pairs schema for STS tasks); without, mteb loads the hub data.

`table()` decides the task's rows once: the limit applied (`inbedder.tasks`), every row with its
subset and resolved instruction (`TABLE_COLUMNS`); robustness and own-data tables hold each text once
per instruction; an mteb table holds the texts mteb will ask for. The task_table rule writes it to
`results/<run>/tasks/<task>.parquet`; `prompts(table)` (encode) and `score(table, ...)` (evaluate) read
only that table. Prompts of the triplet and clustering tasks with two or more subsets include every
text under every subset's instruction, so the cross-view diagnostic (one view's embeddings scored
against the other view's labels) reads from the same cache.

Metric names: `success_rate` (triplets), `v_measure` (clustering, robustness per instruction),
`spearman` (pairs: cosine similarity vs gold score), `success_rate_crossview` / `v_measure_crossview`
(a two-view task's embeddings under the *other* view's instruction, scored against this view's
triplets / labels with this view's k), `v_measure_mean`, `dci`, `dii` (robustness), `silhouette`
(own data, cosine), and mteb's own names for mteb tasks (`v_measure`, `cosine_spearman`,
`map_at_1000`, ...). Subset `hmean` holds the harmonic mean over a task's subsets (per seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from inbedder import metrics, mteb_tasks
from inbedder.item_data import item_id, item_rows, pair_id
from inbedder.tasks import (
    DEFAULT_SUBSET,
    ROBUSTNESS_GROUPS,
    Lookup,
    Outcome,
    Score,
    Scoring,
    TaskError,
    TaskKind,
    distinct_prompts,
    embed_texts,
    fill_instructions,
    keep_first,
    limit_per_group,
    mteb_instruction,
    mteb_task_name,
    read_dataset,
    read_own,
    robustness_instructions,
    subset_instructions,
    write_task_table,
)
from inbedder.vocabulary import GOLD_MODE

HMEAN = "hmean"
ALL = "all"


# ----------------------------------------------------------------------------------------------
# two-view kinds: triplets and clustering


def _views(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(subset, instruction) of a triplet or clustering table, in table order."""
    pairs = table[["subset", "instruction"]].drop_duplicates()
    for subset, group in pairs.groupby("subset", sort=False):
        if len(group) > 1:
            raise ValueError(f"subset {subset!r} has more than one instruction: {list(group['instruction'])}")
    return [(str(s), str(i)) for s, i in pairs.itertuples(index=False)]


def _cross_name(subset: str, other: str, n_views: int) -> str:
    return subset if n_views == 2 else f"{subset}|{other}"


class _TwoView(TaskKind):
    text_columns: ClassVar[tuple[str, ...]]
    limit_key: ClassVar[str]  # a two-view table keeps the same keys (texts, mirrored triplets) in every view

    def table(self, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
        table = fill_instructions(read_dataset(self.name, self.spec, self.kind, data_dir), self.name, self.spec,
                                  self.where(data_dir))
        return limit_per_group(table, "subset", table[self.limit_key], limit)[list(self.columns)]

    def prompts(self, table: pd.DataFrame) -> list[dict[str, str]]:
        rows = list(table.itertuples(index=False))
        own = [(getattr(row, c), row.instruction) for row in rows for c in self.text_columns]
        views = list(dict.fromkeys(table["instruction"]))
        if len(views) < 2:
            return distinct_prompts(own)
        texts = list(dict.fromkeys(str(getattr(row, c)) for row in rows for c in self.text_columns))
        return distinct_prompts(own + [(t, i) for i in views for t in texts])


class Triplets(_TwoView):
    """Success rate per subset (view), their harmonic mean, and the cross-view success rates."""

    kind = "triplets"
    columns = ("subset", "instruction", "anchor", "positive", "negative")
    text_columns = ("anchor", "positive", "negative")
    limit_key = "anchor"
    main_metric = "success_rate"
    report_metrics = ("success_rate",)
    report_combine = HMEAN

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        out = Outcome()
        views = _views(table)
        rates = []
        for subset, instruction in views:
            rows = table[table["subset"] == subset]
            emb = [embed_texts(lookup, list(rows[c]), instruction, f"{self.name}/{subset}") for c in self.text_columns]
            correct = metrics.triplet_correct(*emb)
            ids = [item_id(*t) for t in zip(*(rows[c] for c in self.text_columns), strict=True)]
            rate = float(np.mean(correct))
            rates.append(rate)
            out.scores.append(Score(subset, "success_rate", rate, None, len(rows)))
            out.items += item_rows(subset, "success_rate", None, "mean", correct, ids=ids)
            for other, other_instruction in views:
                if other == subset:
                    continue
                emb = [embed_texts(lookup, list(rows[c]), other_instruction, f"{self.name}/{subset} under {other}")
                       for c in self.text_columns]
                correct = metrics.triplet_correct(*emb)
                name = _cross_name(subset, other, len(views))
                out.scores.append(Score(name, "success_rate_crossview", float(np.mean(correct)), None, len(rows)))
                out.items += item_rows(name, "success_rate_crossview", None, "mean", correct, ids=ids)
        out.scores.append(Score(HMEAN, "success_rate", metrics.harmonic_mean(rates), None, len(table)))
        return out


class Clustering(_TwoView):
    """V-measure per subset (view) and seed, the per-seed harmonic mean, and the cross-view V-measures."""

    kind = "clustering"
    columns = ("subset", "instruction", "text", "label")
    text_columns = ("text",)
    limit_key = "text"
    main_metric = "v_measure"
    report_metrics = ("v_measure",)
    report_combine = HMEAN
    labelled_views = True

    def keeps_last_words(self) -> bool:
        return True

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        out = Outcome()
        views = _views(table)
        per_seed: dict[int, list[float]] = {s: [] for s in scoring.seeds}
        for subset, instruction in views:
            rows = table[table["subset"] == subset]
            texts, labels = list(rows["text"]), [str(x) for x in rows["label"]]
            x = embed_texts(lookup, texts, instruction, f"{self.name}/{subset}")
            for i, seed in enumerate(scoring.seeds):
                v, assignment = metrics.kmeans_v_measure(x, labels, seed)
                per_seed[seed].append(v)
                out.scores.append(Score(subset, "v_measure", v, seed, len(texts)))
                out.items += item_rows(subset, "v_measure", seed, "v_measure", assignment, labels=labels,
                                       ids=[item_id(t) for t in texts])
                if i == 0:
                    out.clusterings.append({"subset": subset, "instruction": instruction, "texts": texts,
                                            "labels": labels, "assignment": assignment, "seed": seed})
            for other, other_instruction in views:
                if other == subset:
                    continue
                x_other = embed_texts(lookup, texts, other_instruction, f"{self.name}/{subset} under {other}")
                name = _cross_name(subset, other, len(views))
                for seed in scoring.seeds:
                    v, assignment = metrics.kmeans_v_measure(x_other, labels, seed)
                    out.scores.append(Score(name, "v_measure_crossview", v, seed, len(texts)))
                    out.items += item_rows(name, "v_measure_crossview", seed, "v_measure", assignment,
                                           labels=labels, ids=[item_id(t) for t in texts])
        n = int(table.groupby("subset").size().max())
        out.scores += [Score(HMEAN, "v_measure", metrics.harmonic_mean(v), s, n) for s, v in per_seed.items()]
        return out


# ----------------------------------------------------------------------------------------------
# pairs


class Pairs(TaskKind):
    """Spearman of cosine vs gold score over all pairs, and per subset: the config key naming an instruction
    (rows whose instruction the config does not name have subset "" and count in `all` only)."""

    kind = "pairs"
    columns = ("subset", "instruction", "text1", "text2", "score")
    main_metric = "spearman"
    report_metrics = ("spearman", "cosine_spearman", "main_score")
    instructions_filtered = False  # the instructions come with each pair; the authors' filter held the fillers only

    def table(self, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
        table = fill_instructions(read_dataset(self.name, self.spec, "pairs", data_dir), self.name, self.spec,
                                  self.where(data_dir))
        table = limit_per_group(table, "instruction", table["text1"] + "\x1f" + table["text2"], limit)
        by_text = {v: k for k, v in (self.spec.get("instructions") or {}).items() if isinstance(v, str)}
        table["subset"] = [by_text.get(str(i), "") for i in table["instruction"]]
        return table[list(self.columns)]

    def prompts(self, table: pd.DataFrame) -> list[dict[str, str]]:
        return distinct_prompts(p for row in table.itertuples(index=False)
                                for p in ((row.text1, row.instruction), (row.text2, row.instruction)))

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        out = Outcome()
        groups = list(table.groupby("instruction", sort=False))
        left, right = [], []
        for instruction, rows in groups:
            left.append(embed_texts(lookup, list(rows["text1"]), str(instruction), f"{self.name}/{instruction}"))
            right.append(embed_texts(lookup, list(rows["text2"]), str(instruction), f"{self.name}/{instruction}"))
        gold = np.concatenate([rows["score"].to_numpy(dtype=float) for _, rows in groups])
        out.scores.append(Score(ALL, "spearman", metrics.pair_spearman(np.vstack(left), np.vstack(right), gold), None,
                                len(table)))
        ids = [pair_id(a, b) for _, rows in groups for a, b in zip(rows["text1"], rows["text2"], strict=True)]
        out.items += item_rows(ALL, "spearman", None, "spearman",
                               metrics.paired_cosine_similarity(np.vstack(left), np.vstack(right)), gold=gold,
                               ids=ids)
        for (_, rows), a, b in zip(groups, left, right, strict=True):
            scores = rows["score"].to_numpy(dtype=float)
            subset = str(rows["subset"].iloc[0])
            if subset and len(set(scores)) > 1:
                out.scores.append(Score(subset, "spearman", metrics.pair_spearman(a, b, scores), None, len(rows)))
                out.items += item_rows(subset, "spearman", None, "spearman", metrics.paired_cosine_similarity(a, b),
                                       gold=scores, ids=[pair_id(x, y) for x, y in zip(rows["text1"], rows["text2"],
                                                                                       strict=True)])
        return out


# ----------------------------------------------------------------------------------------------
# robustness and own data: each text under every configured instruction


class Robustness(TaskKind):
    """V-measure under each of the 30 instructions (subset `<group>/<index>`), then per seed the group means,
    dci and dii."""

    kind = "robustness"
    columns = ("subset", "instruction", "text", "label")
    main_metric = "v_measure"
    default_modes = ("1st-gen",)  # 30 instructions x every text is expensive
    report_metrics = ("v_measure_mean",)

    def keeps_last_words(self) -> bool:
        return True

    def table(self, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
        instructions = robustness_instructions(self.name, self.spec)
        table = read_dataset(self.name, self.spec, "clustering", data_dir)
        subset = self.spec.get("subset")
        table = table[table["subset"].astype(str) == str(subset)]
        if table.empty:
            raise TaskError(f"{self.where(data_dir)}: no rows of subset {subset!r} (tasks.{self.name}.subset)")
        table = table[["text", "label"]]
        table = table[keep_first(list(table["text"]), limit)].reset_index(drop=True)
        return pd.concat([table.assign(subset=f"{group}/{index:02d}", instruction=instruction)
                          for group, index, instruction in instructions], ignore_index=True)[list(self.columns)]

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        out = Outcome()
        by_seed: dict[int, dict[str, list[float]]] = {s: {g: [] for g in ROBUSTNESS_GROUPS} for s in scoring.seeds}
        n = 0
        for subset, rows in table.groupby("subset", sort=False):
            texts, labels = list(rows["text"]), [str(x) for x in rows["label"]]
            n = len(texts)
            x = embed_texts(lookup, texts, str(rows["instruction"].iloc[0]), f"{self.name}/{subset}")
            for seed in scoring.seeds:
                v, assignment = metrics.kmeans_v_measure(x, labels, seed)
                by_seed[seed][str(subset).split("/")[0]].append(v)
                out.scores.append(Score(str(subset), "v_measure", v, seed, n))
                out.items += item_rows(str(subset), "v_measure", seed, "v_measure", assignment, labels=labels,
                                       ids=[item_id(t) for t in texts])
        for seed, groups in by_seed.items():
            summary = metrics.robustness_summary(groups)
            out.scores += [Score(g, "v_measure_mean", summary[f"mean_{g}"], seed, n) for g in ROBUSTNESS_GROUPS]
            out.scores += [Score(ALL, key, summary[key], seed, n) for key in ("dci", "dii")]
        return out


class Own(TaskKind):
    """Own data clustered under each instruction: silhouette always, V-measure when labels exist."""

    kind = "own"
    columns = ("subset", "instruction", "text")  # and `label` when the file has one
    main_metric = "v_measure"
    writes_assignments = True
    report_metrics = ("v_measure", "silhouette")

    def data_files(self, data_dir: str | Path = "data") -> list[str]:
        return [self.spec["path"]]

    def table(self, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
        instructions = subset_instructions(self.name, self.spec)
        if not instructions:
            raise TaskError(f"tasks.{self.name}.instructions: an own-data task needs at least one instruction")
        table = read_own(self.name, self.spec)
        table = table[keep_first(list(table["text"]), limit)].reset_index(drop=True)
        columns = [*self.columns, *(["label"] if "label" in table.columns else [])]
        return pd.concat([table.assign(subset=subset, instruction=instruction)
                          for subset, instruction in instructions.items()], ignore_index=True)[columns]

    def k(self, table: pd.DataFrame) -> int:
        """Number of clusters: `k`, else the number of distinct labels."""
        if self.spec.get("k") is not None:
            return int(self.spec["k"])
        if "label" in table.columns:
            return int(table["label"].nunique())
        raise TaskError(f"tasks.{self.name}.k: own data without a label column needs the number of clusters k")

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        from sklearn.metrics import v_measure_score

        out = Outcome()
        k = self.k(table)
        for subset, rows in table.groupby("subset", sort=False):
            texts, instruction = list(rows["text"]), str(rows["instruction"].iloc[0])
            labels = [str(x) for x in rows["label"]] if "label" in rows.columns else None
            x = embed_texts(lookup, texts, instruction, f"{self.name}/{subset}")
            for i, seed in enumerate(scoring.seeds):
                assignment = metrics.kmeans_assign(x, k, seed)
                out.scores.append(Score(str(subset), "silhouette", metrics.cosine_silhouette(x, assignment), seed,
                                        len(texts)))
                if labels is not None:
                    out.scores.append(Score(str(subset), "v_measure", float(v_measure_score(labels, assignment)), seed,
                                            len(texts)))
                    out.items += item_rows(str(subset), "v_measure", seed, "v_measure", assignment,
                                           labels=labels, ids=[item_id(t) for t in texts])
                if i == 0:
                    out.clusterings.append({"subset": str(subset), "instruction": instruction, "texts": texts,
                                            "labels": labels, "assignment": assignment, "seed": seed})
        return out


# ----------------------------------------------------------------------------------------------
# mteb


class Mteb(TaskKind):
    """An mteb task run on cached embeddings (inbedder.mteb_tasks); its table lists the texts mteb asks for."""

    kind = "mteb"
    columns = ("subset", "instruction", "text")  # cluster sets add `label`; STS tables are text1, text2, score
    main_metric = None
    writes_mteb_results = True
    # mteb's names, by task type: reranking (map, map_at_1000), clustering, STS; no type scores another's
    report_metrics = ("map", "map_at_1000", "v_measure", "cosine_spearman", "spearman", "main_score")

    def unavailable_offline(self, offline: str) -> str | None:
        if "dataset" not in self.spec:
            return (f"hub-only data not available in this run (mteb downloads {mteb_task_name(self.name, self.spec)}; "
                    f"offline: {offline})")
        return super().unavailable_offline(offline)

    def keeps_last_words(self) -> bool:
        return mteb_tasks.is_legacy_clustering(mteb_tasks.mteb_task_class(mteb_task_name(self.name, self.spec)))

    def data_note(self) -> str:
        if "dataset" not in self.spec:
            return ""
        return f"our data: dataset {self.spec['dataset']} (sources.yaml) in place of mteb's own loading"

    def table(self, data_dir: str | Path = "data", limit: int | None = None) -> pd.DataFrame:
        instruction = mteb_instruction(self.name, self.spec)
        if "dataset" not in self.spec:  # mteb's hub data, cut to `limit` (retrieval/reranking tasks)
            texts = mteb_tasks.texts_of_loaded_task(mteb_tasks.mteb_task(self.name, self.spec, limit=limit))
            return pd.DataFrame({"subset": DEFAULT_SUBSET, "instruction": instruction, "text": texts})
        cls = mteb_tasks.mteb_task_class(mteb_task_name(self.name, self.spec))
        if mteb_tasks.is_sts(cls):
            table = read_dataset(self.name, self.spec, "pairs", data_dir)
            table = table[keep_first(list(table["text1"] + "\x1f" + table["text2"]), limit)].reset_index(drop=True)
            return table.assign(subset=DEFAULT_SUBSET, instruction=instruction)[
                ["subset", "instruction", "text1", "text2", "score"]]
        if not mteb_tasks.is_legacy_clustering(cls):
            raise TaskError(f"tasks.{self.name}.dataset: replacing the data of {cls.metadata.name} "
                            f"({cls.__mro__[1].__name__}) is supported for legacy clustering and STS tasks only")
        table = read_dataset(self.name, self.spec, "clustering", data_dir)
        table = table.assign(subset=table["subset"].astype(str))
        if self.spec.get("subsets"):
            wanted = [str(s) for s in self.spec["subsets"]]
            missing = sorted(set(wanted) - set(table["subset"]))
            if missing:
                raise TaskError(f"tasks.{self.name}.subsets: {missing} not in {self.where(data_dir)} "
                                f"(has {sorted(set(table['subset']))})")
            table = table[table["subset"].isin(wanted)]
        # cluster sets are independent samples: the set id is part of the key
        table = limit_per_group(table, "subset", table["subset"] + "\x1f" + table["text"], limit)
        return table.assign(instruction=instruction)[["subset", "instruction", "text", "label"]]

    @staticmethod
    def texts(table: pd.DataFrame) -> list[str]:
        """The texts mteb asks for, in its order (STS: the first column, then the second)."""
        if "text1" in table.columns:
            return [str(t) for t in table["text1"]] + [str(t) for t in table["text2"]]
        return [str(t) for t in table["text"]]

    def prompts(self, table: pd.DataFrame) -> list[dict[str, str]]:
        instruction = str(table["instruction"].iloc[0])
        return distinct_prompts((t, instruction) for t in self.texts(table))

    def score(self, table: pd.DataFrame, lookup: Lookup, scoring: Scoring) -> Outcome:
        return mteb_tasks.score_mteb(self.name, self.spec, table, lookup, scoring)


# ----------------------------------------------------------------------------------------------
# the registry and the entry points


KINDS: dict[str, type[TaskKind]] = {cls.kind: cls for cls in (Triplets, Clustering, Pairs, Robustness, Own, Mteb)}


def kind_class(kind: Any, where: str = "kind") -> type[TaskKind]:
    """The class of a task kind; `where` names the config key or file an unknown kind is reported against."""
    if kind not in KINDS:
        raise TaskError(f"{where}: {kind!r} is not one of {tuple(KINDS)}")
    return KINDS[kind]


def kind_of(name: str, spec: Mapping[str, Any]) -> TaskKind:
    """The task `tasks.<name>` as an instance of its kind's class."""
    return kind_class(spec.get("kind"), f"tasks.{name}.kind")(name, spec)


def unavailable_reason(task: str, config: Mapping[str, Any]) -> str | None:
    """Why a selected task cannot run in this configuration, or None when it can."""
    offline = config["offline"]
    if not offline:
        return None
    return kind_of(task, config["tasks"][task]).unavailable_offline("true" if offline is True else str(offline))


def modes_for(spec: Mapping[str, Any], model_modes: Sequence[str]) -> list[str]:
    """The model's modes a task scores: those in the task's `modes`, else its kind's default (all of them); the
    positive control (mode gold) only where the task names its gold labels (`tasks.<name>.gold`)."""
    if GOLD_MODE in model_modes and not spec.get("gold"):
        model_modes = [m for m in model_modes if m != GOLD_MODE]
    wanted = spec.get("modes")
    if wanted is None and spec.get("kind") in KINDS:
        wanted = KINDS[spec["kind"]].default_modes
    if wanted is None:
        return list(model_modes)
    return [m for m in model_modes if m in wanted]


def task_table(name: str, spec: Mapping[str, Any], data_dir: str | Path = "data",
               limit: int | None = None) -> pd.DataFrame:
    """The rows a task scores, limited and with instructions resolved (`attrs`: task, kind, limit)."""
    task = kind_of(name, spec)
    table = task.table(data_dir=data_dir, limit=limit).reset_index(drop=True)
    table = table.astype({c: "str" for c in table.columns if table[c].dtype == object})  # as read from its file
    table.attrs.update({"task": name, "kind": task.kind, "limit": limit})
    return table


def task_prompts(name: str, spec: Mapping[str, Any], table: pd.DataFrame) -> list[dict[str, str]]:
    """Every distinct (text, instruction) a task table needs, in a deterministic order."""
    return kind_of(name, spec).prompts(table)


def table_prompts(table: pd.DataFrame) -> list[dict[str, str]]:
    """The prompts of a task table read from its file (its kind is in its metadata)."""
    kind = table.attrs.get("kind")
    cls = kind_class(kind, f"task table of {table.attrs.get('task')!r}: kind")
    return cls(str(table.attrs.get("task")), {"kind": kind}).prompts(table)


def build_task_table(name: str, spec: Mapping[str, Any], out_path: str | Path, data_dir: str | Path = "data",
                     limit: int | None = None) -> pd.DataFrame:
    """The task_table rule's entry point: write `results/<run>/tasks/<task>.parquet`."""
    table = task_table(name, spec, data_dir=data_dir, limit=limit)
    write_task_table(table, out_path, task=name, kind=table.attrs["kind"], limit=limit)
    return table
