"""Score one (model, recipe, task) from the encode cache: tidy score rows, mteb-layout JSON, explanations.

Output of `evaluate_task` (one Snakemake job per model, recipe and task):
- `<scores>.csv` with the columns `SCORE_COLUMNS`: one row per score and, for clustering, per seed
  (`seed` empty for deterministic scores; `train_seed` the fine-tune's training seed, empty for an
  untrained model: a run `<recipe>@<seed>` writes recipe `<recipe>` and that seed). Modes are the model's (`models.<m>.modes`, restricted by
  `tasks.<t>.modes`), layers the config's `layers` (sentence encoders: -1).
  Each row also has `ci_low`, `ci_high`: the 95% half-sample bootstrap interval of `value` over the
  task's items, centred on `value`, its seeds fixed (`inbedder.item_data.score_intervals`; empty where a score keeps no per-item data:
  robustness summaries, silhouette, mteb STS Pearson).
- `<scores>.items.parquet` (`inbedder.item_data.ITEM_COLUMNS`): what the bootstrap needs per item, so the
  report never reruns a model: per triplet its correctness, per pair its cosine similarity and gold score,
  per text its cluster id (each seed) and label, per query of an mteb retrieval/reranking task its value
  of each kept metric (`inbedder.mteb_tasks.retrieval_items`).
- `<out_dir>/results/<model>/<revision>[/experiments/seed_<s>]/<Task>.json`: every score in mteb's
  result layout. mteb tasks write it themselves (mteb's `ResultCache` kept inside `out_dir`); the
  paper's own tasks write the same layout. The model name is `inbedder-repro/<model>-<recipe>`, the
  revision `<mode>.L<layer>.<cache key>`: unique per (model, recipe, mode, layer), so mteb never
  serves one embedding's cached result for another (unnamed models share results in mteb).
- `<out_dir>/explanations.json`: for clustering tasks, per cluster the top TF-IDF words of the
  generated answers (texts for sentence encoders) against the other clusters (`inbedder.explain`).
- own-data tasks also `<out_dir>/assignments.csv` (text, subset, mode, layer, seed, cluster[, label]).

The rows scored are those of the task table (`results/<run>/tasks/<task>.parquet`, the same file the
encode job read); each task kind scores them its own way (`inbedder.task_kinds`, metric names there).

Modes stored whole in the cache (`plain`, `prefixed`, `re-encode*`) are scored at layer -1 only.
MiniBatchKMeans runs single-threaded (the same clusters on every machine, and far faster on a busy CPU).

The paper's AskUbuntu / SciDocsRR / StackOverflow columns are mteb 1.x reranking MAP (mean sklearn
average precision over each query's candidate list). mteb 2.x runs these sets as retrieval over the
same candidate lists (`top_ranked`) and reports `map_at_1000`: on lists with at least one positive and
one negative and no tied scores the two are the same number (tests/test_evaluate.py checks it against
`metrics.reranking_map_v1`); `map_at_1000` is what lands in the paper's columns here.

A selected task that cannot run at all in this configuration (hub-only data offline) has no job, nor
does a (model, task) pair with no mode in the task's `modes`; `collect_scores` lists them in
`skipped.csv` (`task, reason`) beside `scores.csv`, so nothing is dropped silently and `scores.csv`
holds only finite values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inbedder import pooling
from inbedder.cache import load_cache
from inbedder.explain import explain_clusters
from inbedder.files import atomic_path, sha256_json, write_json
from inbedder.item_data import NO_SEED, item_frame, score_intervals, write_items
from inbedder.scores import read_scores, write_scores
from inbedder.task_kinds import TaskKind, kind_of
from inbedder.tasks import Lookup, Score, Scoring, read_task_table, table_revision
from inbedder.vocabulary import ENCODER_MODES, SCORE_COLUMNS

log = logging.getLogger(__name__)

MODEL_NAME_PREFIX = "inbedder-repro"
SPLIT = "test"
LANGUAGES = ["eng-Latn"]

EmbeddingSource = Callable[[str, int], Lookup]


@dataclass(frozen=True)
class Run:
    """What one evaluate job scores: a model+recipe on a task, for each mode, layer and seed."""

    model: str
    recipe: str
    task: str
    spec: dict
    modes: tuple[str, ...]
    layers: tuple[int, ...]
    seeds: tuple[int, ...]
    cache_key: str = "nocache"
    train_seed: int | None = None  # the fine-tune's training seed (its cache, hence revision, differs); None untrained

    def model_meta(self, mode: str, layer: int, seed: int | None = None) -> Any:
        """mteb ModelMeta named for this model+recipe, revision unique per (mode, layer, cache)."""
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        return ModelMeta.create_empty({
            "name": f"{MODEL_NAME_PREFIX}/{self.model}-{self.recipe}",
            "revision": f"{mode}.L{layer}.{self.cache_key[:12]}",
            "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True,
            "framework": ["PyTorch"],
            "experiment_kwargs": {"seed": seed} if seed is not None else None,
        })


# ----------------------------------------------------------------------------------------------
# one job


def _write_mteb_layout(run: Run, task: TaskKind, mode: str, layer: int, scores: list[Score], out_dir: Path,
                       revision: str, seconds: float) -> None:
    """Write the paper's own tasks' scores as mteb TaskResult JSON (one file per seed)."""
    import mteb
    from mteb.results import TaskResult

    cache = mteb.ResultCache(out_dir)
    for seed in dict.fromkeys(s.seed for s in scores):
        entries: dict[str, dict[str, Any]] = {}
        for s in scores:
            if s.seed == seed:
                entry = entries.setdefault(s.subset, {"hf_subset": s.subset, "languages": LANGUAGES, "n": s.n})
                entry.setdefault("main_score", s.value)  # the subset's first metric, unless `main` follows
                entry[s.metric] = s.value
        for entry in entries.values():
            if task.main_metric in entry:
                entry["main_score"] = entry[task.main_metric]
        result = TaskResult(dataset_revision=revision, task_name=run.task, mteb_version=mteb.__version__,
                            scores={SPLIT: list(entries.values())}, evaluation_time=seconds)
        cache.save_to_cache(result, run.model_meta(mode, layer, seed))


def layers_of(mode: str, layers: Sequence[int]) -> list[int]:
    """Layers a mode is scored at: every configured one, but -1 alone for modes stored whole in the cache
    (sentence-encoder `plain`/`prefixed`/`gold`, `re-encode*`), which do not depend on a hidden layer."""
    if mode in ENCODER_MODES or mode.startswith("re-encode"):
        return [-1]
    return list(layers)


def evaluate_task(
    run: Run,
    table: pd.DataFrame,
    embeddings: EmbeddingSource,
    out_csv: str | Path,
    out_dir: str | Path,
    answers: Mapping[tuple[str, str], str] | None = None,
    out_items: str | Path | None = None,
) -> pd.DataFrame:
    """Score every (mode, layer) of a run on its task table; write the tidy CSV (with each score's bootstrap CI),
    the per-item data behind it, mteb-layout JSON and explanations."""
    if not run.modes:
        raise ValueError(f"{run.model}-{run.recipe}/{run.task}: no embedding mode to score")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = kind_of(run.task, run.spec)
    if table.attrs.get("task", run.task) != run.task:
        raise ValueError(f"task table of {table.attrs['task']!r} given to score task {run.task!r}")
    revision = table_revision(table)
    rows, explanations, assignments, items = [], [], [], []
    for mode in run.modes:
        for layer in layers_of(mode, run.layers):
            start = time.monotonic()
            lookup = embeddings(mode, layer)
            scoring = Scoring(seeds=run.seeds, out_dir=out_dir, model_meta=partial(run.model_meta, mode, layer))
            outcome = task.score(table, lookup, scoring)
            seconds = time.monotonic() - start
            log.info("%s-%s %s %s L%d: %d scores in %.1fs", run.model, run.recipe, run.task, mode, layer,
                     len(outcome.scores), seconds)
            bad = [s for s in outcome.scores if not math.isfinite(s.value)]
            if bad:
                raise ValueError(f"{run.task} {mode} L{layer}: non-finite score(s) {bad[:3]}")
            if not task.writes_mteb_results:
                _write_mteb_layout(run, task, mode, layer, outcome.scores, out_dir, revision, seconds)
            rows += [
                {"model": run.model, "recipe": run.recipe, "mode": mode, "layer": layer, "task": run.task,
                 "subset": s.subset, "metric": s.metric, "value": s.value, "seed": s.seed,
                 "train_seed": run.train_seed, "n": s.n}
                for s in outcome.scores
            ]
            items += [{"model": run.model, "recipe": run.recipe, "task": run.task, "mode": mode, "layer": layer,
                       "train_seed": NO_SEED if run.train_seed is None else run.train_seed, **item} for item in outcome.items]
            for c in outcome.clusterings:
                explanations.append(_explanation(c, mode, layer, answers))
                if task.writes_assignments:
                    assignments += [
                        {"text": t, "subset": c["subset"], "mode": mode, "layer": layer, "seed": c["seed"],
                         "cluster": int(a), **({"label": c["labels"][j]} if c["labels"] is not None else {})}
                        for j, (t, a) in enumerate(zip(c["texts"], c["assignment"], strict=True))
                    ]
    frame = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    item_table = item_frame(items)
    start = time.monotonic()
    frame = score_intervals(frame, item_table)
    log.info("%s-%s %s: CIs of %d scores from %d per-item rows in %.1fs", run.model, run.recipe, run.task,
             int(frame["ci_low"].notna().sum()), len(item_table), time.monotonic() - start)
    frame["seed"] = frame["seed"].astype("Int64")
    frame["train_seed"] = frame["train_seed"].astype("Int64")
    write_scores(frame, out_csv)
    write_items(item_table, out_items if out_items is not None else items_path(out_csv))
    write_json(out_dir / "explanations.json", {
        "model": run.model, "recipe": run.recipe, "task": run.task,
        "source": "answers" if answers else "texts", "explanations": explanations,
    })
    if assignments:
        with atomic_path(out_dir / "assignments.csv") as tmp:
            pd.DataFrame(assignments).to_csv(tmp, index=False)
    return frame


def _explanation(clustering: dict, mode: str, layer: int, answers: Mapping[tuple[str, str], str] | None) -> dict:
    texts, instruction = clustering["texts"], clustering["instruction"]
    docs = texts
    if answers:
        docs = [answers.get((t, instruction), "") for t in texts]
    return {
        "mode": mode, "layer": layer, "subset": clustering["subset"], "instruction": instruction,
        "seed": clustering["seed"], "k": len({int(a) for a in clustering["assignment"]}),
        "clusters": explain_clusters(docs, clustering["assignment"], clustering["labels"]),
    }


def items_path(scores_csv: str | Path) -> Path:
    """The per-item table beside a score table: `<task>.csv` -> `<task>.items.parquet`."""
    path = Path(scores_csv)
    return path.with_name(f"{path.stem}.items.parquet")


# ----------------------------------------------------------------------------------------------
# from the encode cache (the rule's entry point) and the run-level table


def answers_of(prompts: Sequence[Mapping[str, Any]], answers: Sequence[Mapping[str, Any]] | None,
               ) -> dict[tuple[str, str], str] | None:
    """(text, instruction) -> generated answer, joining prompts.jsonl and answers.jsonl rows on `id`."""
    if answers is None:
        return None
    by_id = {r["id"]: (r["text"], r["instruction"]) for r in prompts}
    out = {}
    for r in answers:
        if r["id"] not in by_id:
            raise ValueError(f"answers.jsonl: id {r['id']!r} is not in prompts.jsonl")
        out[by_id[r["id"]]] = str(r.get("answer", ""))
    return out


def evaluate_cache(
    cache_dir: str | Path,
    table: str | Path | pd.DataFrame,
    out_csv: str | Path,
    out_dir: str | Path,
    *,
    model: str,
    recipe: str,
    task: str,
    spec: dict,
    modes: Sequence[str],
    layers: Sequence[int],
    seeds: Sequence[int],
    out_items: str | Path | None = None,
    train_seed: int | None = None,
) -> pd.DataFrame:
    """Score a task table from its encode cache (results/<run>/cache/<model>-<recipe>/<task>/): the rule's entry point."""
    cache = load_cache(cache_dir)
    log.info("cache %s", pooling.describe(cache))
    if not isinstance(table, pd.DataFrame):
        table = read_task_table(table)
    run = Run(model=model, recipe=recipe, task=task, spec=dict(spec), modes=tuple(modes), layers=tuple(layers),
              seeds=tuple(seeds), cache_key=str(cache.meta.get("cache_key") or sha256_json(cache.meta)),
              train_seed=train_seed)
    return evaluate_task(run, table, lambda mode, layer: pooling.lookup(cache, mode, layer), out_csv, out_dir,
                         answers=answers_of(cache.prompts, cache.answers), out_items=out_items)


def collect_scores(score_files: Iterable[str | Path], skipped: Mapping[str, str], out_csv: str | Path,
                   out_skipped: str | Path) -> pd.DataFrame:
    """Concatenate per-job score tables into scores.csv and write skipped.csv (task, reason)."""
    frames = [read_scores(p) for p in score_files]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))
    if not np.all(np.isfinite(frame["value"].astype(float))):
        raise ValueError("collect_scores: a non-finite value reached scores.csv")
    write_scores(frame, out_csv)
    with atomic_path(out_skipped) as tmp:
        pd.DataFrame(sorted(skipped.items()), columns=["task", "reason"]).to_csv(tmp, index=False)
    return frame
