"""Score one (model, recipe, task) from the encode cache: tidy score rows, mteb-layout JSON, explanations.

Output of `evaluate_task` (one Snakemake job per model, recipe and task):
- `<scores>.csv` with the columns `SCORE_COLUMNS`: one row per score and, for clustering, per seed
  (`seed` empty for deterministic scores). Modes are the model's (`models.<m>.modes`, restricted by
  `tasks.<t>.modes`), layers the config's `layers` (sentence encoders: -1).
- `<out_dir>/results/<model>/<revision>[/experiments/seed_<s>]/<Task>.json`: every score in mteb's
  result layout. mteb tasks write it themselves (mteb's `ResultCache` kept inside `out_dir`); the
  paper's own tasks write the same layout. The model name is `inbedder-repro/<model>-<recipe>`, the
  revision `<mode>.L<layer>.<cache key>`: unique per (model, recipe, mode, layer), so mteb never
  serves one embedding's cached result for another (unnamed models share results in mteb).
- `<out_dir>/explanations.json`: for clustering tasks, per cluster the top TF-IDF words of the
  generated answers (texts for sentence encoders) against the other clusters (`inbedder.explain`).
- own-data tasks also `<out_dir>/assignments.csv` (text, subset, mode, layer, seed, cluster[, label]).

Metric names: `success_rate` (triplets), `v_measure` (clustering, robustness per instruction),
`spearman` (pairs: cosine similarity vs gold score), `success_rate_crossview` / `v_measure_crossview`
(a two-view task's embeddings under the *other* view's instruction, scored against this view's
triplets / labels with this view's k), `v_measure_mean`, `dci`, `dii` (robustness), `silhouette`
(own data, cosine), and mteb's own names for mteb tasks (`v_measure`, `cosine_spearman`,
`map_at_1000`, ...). Subset `hmean` holds the harmonic mean over a task's subsets (per seed).

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

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from inbedder import metrics, tasks
from inbedder.explain import explain_clusters
from inbedder.files import atomic_path, sha256_file, sha256_json, write_json

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("model", "recipe", "mode", "layer", "task", "subset", "metric", "value", "seed", "n")
MODEL_NAME_PREFIX = "inbedder-repro"
HMEAN = "hmean"
ALL = "all"
SPLIT = "test"
LANGUAGES = ["eng-Latn"]
# Extra mteb scores kept beside each task's main score, by mteb task type.
MTEB_EXTRA_METRICS = {
    "STS": ("cosine_pearson",),
    "Reranking": ("map_at_1000", "mrr_at_10", "ndcg_at_10"),
    "Retrieval": ("map_at_1000", "mrr_at_10", "ndcg_at_10"),
}

Lookup = Mapping[tuple[str, str], np.ndarray]
EmbeddingSource = Callable[[str, int], Lookup]


@dataclass(frozen=True)
class Score:
    """One score of a task under one (mode, layer)."""

    subset: str
    metric: str
    value: float
    seed: int | None
    n: int


@dataclass(frozen=True)
class Run:
    """What one evaluate job scores: a model+recipe on a task, for each mode, layer and seed."""

    model: str
    recipe: str
    task: str
    spec: dict
    modes: tuple[str, ...]
    layers: tuple[int, ...] = (-1,)
    seeds: tuple[int, ...] = (0, 1, 2)
    data_dir: str = "data"
    limit: int | None = None
    cache_key: str = "nocache"

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


@dataclass
class Outcome:
    """Scores of one (mode, layer) and the clusterings worth explaining."""

    scores: list[Score] = field(default_factory=list)
    clusterings: list[dict] = field(default_factory=list)  # subset, texts, instruction, assignment, labels, seed


# ----------------------------------------------------------------------------------------------
# embeddings


def embed_texts(lookup: Lookup, texts: Sequence[str], instruction: str, where: str) -> np.ndarray:
    """Stack the cached embeddings of `texts` under `instruction`; a text missing from the cache is an error."""
    missing = [t for t in dict.fromkeys(texts) if (t, instruction) not in lookup]
    if missing:
        shown = "; ".join(repr(t[:60]) for t in missing[:3])
        raise KeyError(
            f"{where}: {len(missing)} text(s) are not in the encode cache under instruction {instruction!r} "
            f"(e.g. {shown}). The cache must be built from tasks.task_prompts of this task and limit."
        )
    return np.stack([np.asarray(lookup[(t, instruction)], dtype=np.float32) for t in texts])


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


# ----------------------------------------------------------------------------------------------
# the paper's tasks


def _views(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(subset, instruction) of a triplet or clustering table, in table order."""
    pairs = table[["subset", "instruction"]].drop_duplicates()
    for subset, group in pairs.groupby("subset", sort=False):
        if len(group) > 1:
            raise ValueError(f"subset {subset!r} has more than one instruction: {list(group['instruction'])}")
    return [(str(s), str(i)) for s, i in pairs.itertuples(index=False)]


def _cross_name(subset: str, other: str, n_views: int) -> str:
    return subset if n_views == 2 else f"{subset}|{other}"


def score_triplets(table: pd.DataFrame, lookup: Lookup, task: str) -> Outcome:
    """Success rate per subset, their harmonic mean, and the cross-view success rates."""
    out = Outcome()
    views = _views(table)
    rates = []
    for subset, instruction in views:
        rows = table[table["subset"] == subset]
        emb = [embed_texts(lookup, list(rows[c]), instruction, f"{task}/{subset}") for c in ("anchor", "positive", "negative")]
        rate = metrics.triplet_success_rate(*emb)
        rates.append(rate)
        out.scores.append(Score(subset, "success_rate", rate, None, len(rows)))
        for other, other_instruction in views:
            if other == subset:
                continue
            emb = [embed_texts(lookup, list(rows[c]), other_instruction, f"{task}/{subset} under {other}")
                   for c in ("anchor", "positive", "negative")]
            out.scores.append(Score(_cross_name(subset, other, len(views)), "success_rate_crossview",
                                    metrics.triplet_success_rate(*emb), None, len(rows)))
    out.scores.append(Score(HMEAN, "success_rate", metrics.harmonic_mean(rates), None, len(table)))
    return out


def score_clustering(table: pd.DataFrame, lookup: Lookup, task: str, seeds: Sequence[int]) -> Outcome:
    """V-measure per subset and seed, the per-seed harmonic mean, and the cross-view V-measures."""
    out = Outcome()
    views = _views(table)
    per_seed: dict[int, list[float]] = {s: [] for s in seeds}
    for subset, instruction in views:
        rows = table[table["subset"] == subset]
        texts, labels = list(rows["text"]), [str(x) for x in rows["label"]]
        x = embed_texts(lookup, texts, instruction, f"{task}/{subset}")
        for i, seed in enumerate(seeds):
            v, assignment = metrics.kmeans_v_measure(x, labels, seed)
            per_seed[seed].append(v)
            out.scores.append(Score(subset, "v_measure", v, seed, len(texts)))
            if i == 0:
                out.clusterings.append({"subset": subset, "instruction": instruction, "texts": texts,
                                        "labels": labels, "assignment": assignment, "seed": seed})
        for other, other_instruction in views:
            if other == subset:
                continue
            x_other = embed_texts(lookup, texts, other_instruction, f"{task}/{subset} under {other}")
            for seed in seeds:
                v, _ = metrics.kmeans_v_measure(x_other, labels, seed)
                out.scores.append(Score(_cross_name(subset, other, len(views)), "v_measure_crossview", v, seed, len(texts)))
    n = int(table.groupby("subset").size().max())
    out.scores += [Score(HMEAN, "v_measure", metrics.harmonic_mean(v), s, n) for s, v in per_seed.items()]
    return out


def _pair_subsets(spec: dict, instructions: Iterable[str]) -> dict[str, str]:
    """Instruction -> subset name (the config key naming it), for instructions the config names."""
    by_text = {v: k for k, v in (spec.get("instructions") or {}).items() if isinstance(v, str)}
    return {i: by_text[i] for i in instructions if i in by_text}


def score_pairs(table: pd.DataFrame, lookup: Lookup, task: str, spec: dict) -> Outcome:
    """Spearman of cosine vs gold score over all pairs, and per configured instruction."""
    out = Outcome()
    rows_by_instruction = list(table.groupby("instruction", sort=False))
    left, right = [], []
    for instruction, rows in rows_by_instruction:
        left.append(embed_texts(lookup, list(rows["text1"]), str(instruction), f"{task}/{instruction}"))
        right.append(embed_texts(lookup, list(rows["text2"]), str(instruction), f"{task}/{instruction}"))
    gold = np.concatenate([rows["score"].to_numpy(dtype=float) for _, rows in rows_by_instruction])
    out.scores.append(Score(ALL, "spearman", metrics.pair_spearman(np.vstack(left), np.vstack(right), gold), None, len(table)))
    names = _pair_subsets(spec, [str(i) for i, _ in rows_by_instruction])
    for (instruction, rows), a, b in zip(rows_by_instruction, left, right, strict=True):
        scores = rows["score"].to_numpy(dtype=float)
        if str(instruction) in names and len(set(scores)) > 1:
            out.scores.append(Score(names[str(instruction)], "spearman", metrics.pair_spearman(a, b, scores), None, len(rows)))
    return out


def score_robustness(table: pd.DataFrame, lookup: Lookup, task: str, spec: dict, seeds: Sequence[int]) -> Outcome:
    """V-measure under each of the 30 instructions, then per seed the group means, dci and dii."""
    out = Outcome()
    texts, labels = list(table["text"]), [str(x) for x in table["label"]]
    by_seed: dict[int, dict[str, list[float]]] = {s: {g: [] for g in tasks.ROBUSTNESS_GROUPS} for s in seeds}
    for group, index, instruction in tasks.robustness_instructions(task, spec):
        x = embed_texts(lookup, texts, instruction, f"{task}/{group}/{index}")
        for seed in seeds:
            v, _ = metrics.kmeans_v_measure(x, labels, seed)
            by_seed[seed][group].append(v)
            out.scores.append(Score(f"{group}/{index:02d}", "v_measure", v, seed, len(texts)))
    for seed, groups in by_seed.items():
        summary = metrics.robustness_summary(groups)
        out.scores += [Score(g, "v_measure_mean", summary[f"mean_{g}"], seed, len(texts)) for g in tasks.ROBUSTNESS_GROUPS]
        out.scores += [Score(ALL, key, summary[key], seed, len(texts)) for key in ("dci", "dii")]
    return out


def own_k(task: str, spec: dict, table: pd.DataFrame) -> int:
    """Number of clusters of an own-data task: `k`, else the number of distinct labels."""
    if spec.get("k") is not None:
        return int(spec["k"])
    if "label" in table.columns:
        return int(table["label"].nunique())
    raise tasks.TaskError(f"tasks.{task}.k: own data without a label column needs the number of clusters k")


def score_own(table: pd.DataFrame, lookup: Lookup, task: str, spec: dict, seeds: Sequence[int]) -> Outcome:
    """Cluster own data under each instruction: silhouette always, V-measure when labels exist."""
    out = Outcome()
    k = own_k(task, spec, table)
    texts = list(table["text"])
    labels = [str(x) for x in table["label"]] if "label" in table.columns else None
    instructions = tasks.subset_instructions(task, spec)
    if not instructions:
        raise tasks.TaskError(f"tasks.{task}.instructions: an own-data task needs at least one instruction")
    for subset, instruction in instructions.items():
        x = embed_texts(lookup, texts, instruction, f"{task}/{subset}")
        for i, seed in enumerate(seeds):
            assignment = metrics.kmeans_assign(x, k, seed)
            out.scores.append(Score(subset, "silhouette", metrics.cosine_silhouette(x, assignment), seed, len(texts)))
            if labels is not None:
                from sklearn.metrics import v_measure_score

                out.scores.append(Score(subset, "v_measure", float(v_measure_score(labels, assignment)), seed, len(texts)))
            if i == 0:
                out.clusterings.append({"subset": subset, "instruction": instruction, "texts": texts,
                                        "labels": labels, "assignment": assignment, "seed": seed})
    return out


# ----------------------------------------------------------------------------------------------
# mteb tasks


def score_mteb(run: Run, mode: str, layer: int, lookup: Lookup, out_dir: Path) -> Outcome:
    """Run the mteb task (once per seed for clustering) on cached embeddings; results cached in out_dir."""
    import mteb

    out = Outcome()
    instruction = tasks.mteb_instruction(run.task, run.spec)
    task = tasks.mteb_task(run.task, run.spec, data_dir=run.data_dir, limit=run.limit, seed=run.seeds[0])
    clustering = task.metadata.type == "Clustering"
    seeds: Sequence[int | None] = run.seeds if clustering else [None]
    cache = mteb.ResultCache(out_dir)
    main = task.metadata.main_score
    extras = MTEB_EXTRA_METRICS.get(task.metadata.type, ())
    for i, seed in enumerate(seeds):
        if seed is not None:
            task.seed = seed
        meta = run.model_meta(mode, layer, seed)
        encoder = cached_encoder(lookup, instruction, meta)
        with tempfile.TemporaryDirectory() as predictions, threadpool_limits(limits=1):
            result = mteb.evaluate(
                encoder, task, cache=cache, overwrite_strategy="always", co2_tracker=False,
                prediction_folder=predictions if (clustering and i == 0) else None,
                show_progress_bar=False, encode_kwargs={"batch_size": 512},
            )
            if clustering and i == 0:
                out.clusterings += _mteb_clusterings(task, Path(predictions), instruction, seed)
        if result.exceptions:
            raise RuntimeError(f"mteb task {run.task}: {result.exceptions}")
        (task_result,) = result.task_results
        for split, entries in task_result.scores.items():
            for entry in entries:
                subset = str(entry["hf_subset"]) if len(task_result.scores) == 1 else f"{entry['hf_subset']}/{split}"
                for metric in dict.fromkeys((main, *extras)):
                    if metric in entry:
                        out.scores.append(Score(subset, metric, float(entry[metric]), seed, len(encoder.texts)))
    return out


def _mteb_clusterings(task: Any, predictions: Path, instruction: str, seed: int | None) -> list[dict]:
    """The first cluster set of an mteb legacy clustering task, with mteb's cluster assignment."""
    files = list(predictions.glob("*_predictions.json"))
    if not files or not tasks._is_legacy_clustering(type(task)):
        return []
    saved = json.loads(files[0].read_text(encoding="utf-8"))
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


# ----------------------------------------------------------------------------------------------
# one job


def _score(run: Run, mode: str, layer: int, lookup: Lookup, out_dir: Path, table: pd.DataFrame | None) -> Outcome:
    kind = tasks.task_kind(run.task, run.spec)
    if kind == "triplets":
        return score_triplets(table, lookup, run.task)
    if kind == "clustering":
        return score_clustering(table, lookup, run.task, run.seeds)
    if kind == "pairs":
        return score_pairs(table, lookup, run.task, run.spec)
    if kind == "robustness":
        return score_robustness(table, lookup, run.task, run.spec, run.seeds)
    if kind == "own":
        return score_own(table, lookup, run.task, run.spec, run.seeds)
    return score_mteb(run, mode, layer, lookup, out_dir)


MAIN_METRIC = {"triplets": "success_rate", "clustering": "v_measure", "pairs": "spearman",
               "robustness": "v_measure", "own": "v_measure"}


def _write_mteb_layout(run: Run, mode: str, layer: int, scores: list[Score], out_dir: Path, revision: str,
                       seconds: float) -> None:
    """Write the paper's own tasks' scores as mteb TaskResult JSON (one file per seed)."""
    import mteb
    from mteb.results import TaskResult

    kind = tasks.task_kind(run.task, run.spec)
    main = MAIN_METRIC[kind]
    cache = mteb.ResultCache(out_dir)
    for seed in dict.fromkeys(s.seed for s in scores):
        entries: dict[str, dict[str, Any]] = {}
        for s in scores:
            if s.seed == seed:
                entry = entries.setdefault(s.subset, {"hf_subset": s.subset, "languages": LANGUAGES, "n": s.n})
                entry.setdefault("main_score", s.value)  # the subset's first metric, unless `main` follows
                entry[s.metric] = s.value
        for entry in entries.values():
            if main in entry:
                entry["main_score"] = entry[main]
        result = TaskResult(dataset_revision=revision, task_name=run.task, mteb_version=mteb.__version__,
                            scores={SPLIT: list(entries.values())}, evaluation_time=seconds)
        cache.save_to_cache(result, run.model_meta(mode, layer, seed))


def _dataset_revision(run: Run) -> str:
    dataset = run.spec.get("dataset")
    path = tasks.prepared_path(dataset, run.data_dir) if dataset else Path(run.spec.get("path", ""))
    digest = sha256_file(path)[:16] if path.is_file() else "hub"
    return f"{digest}-limit{run.limit}"


def layers_of(mode: str, layers: Sequence[int]) -> list[int]:
    """Layers a mode is scored at: every configured one, but -1 alone for modes stored whole in the cache
    (sentence-encoder `plain`/`prefixed`, `re-encode*`), which do not depend on a hidden layer."""
    if mode in ("plain", "prefixed") or mode.startswith("re-encode"):
        return [-1]
    return list(layers)


def evaluate_task(
    run: Run,
    embeddings: EmbeddingSource,
    out_csv: str | Path,
    out_dir: str | Path,
    answers: Mapping[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """Score every (mode, layer) of a run; write the tidy CSV, mteb-layout JSON and explanations."""
    if not run.modes:
        raise ValueError(f"{run.model}-{run.recipe}/{run.task}: no embedding mode to score")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = tasks.task_kind(run.task, run.spec)
    table = None if kind == "mteb" else tasks.task_table(run.task, run.spec, data_dir=run.data_dir, limit=run.limit)
    revision = _dataset_revision(run)
    rows, explanations, assignments = [], [], []
    for mode in run.modes:
        for layer in layers_of(mode, run.layers):
            start = time.monotonic()
            lookup = embeddings(mode, layer)
            outcome = _score(run, mode, layer, lookup, out_dir, table)
            seconds = time.monotonic() - start
            log.info("%s-%s %s %s L%d: %d scores in %.1fs", run.model, run.recipe, run.task, mode, layer,
                     len(outcome.scores), seconds)
            bad = [s for s in outcome.scores if not math.isfinite(s.value)]
            if bad:
                raise ValueError(f"{run.task} {mode} L{layer}: non-finite score(s) {bad[:3]}")
            if kind != "mteb":
                _write_mteb_layout(run, mode, layer, outcome.scores, out_dir, revision, seconds)
            rows += [
                {"model": run.model, "recipe": run.recipe, "mode": mode, "layer": layer, "task": run.task,
                 "subset": s.subset, "metric": s.metric, "value": s.value, "seed": s.seed, "n": s.n}
                for s in outcome.scores
            ]
            for c in outcome.clusterings:
                explanations.append(_explanation(c, mode, layer, answers))
                if kind == "own":
                    assignments += [
                        {"text": t, "subset": c["subset"], "mode": mode, "layer": layer, "seed": c["seed"],
                         "cluster": int(a), **({"label": c["labels"][j]} if c["labels"] is not None else {})}
                        for j, (t, a) in enumerate(zip(c["texts"], c["assignment"], strict=True))
                    ]
    frame = pd.DataFrame(rows, columns=list(SCORE_COLUMNS))
    frame["seed"] = frame["seed"].astype("Int64")
    write_scores(frame, out_csv)
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


def write_scores(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a tidy score table atomically, columns in SCORE_COLUMNS order."""
    with atomic_path(path) as tmp:
        frame.loc[:, list(SCORE_COLUMNS)].to_csv(tmp, index=False)


def read_scores(path: str | Path) -> pd.DataFrame:
    """Read a tidy score table, checking its columns."""
    frame = pd.read_csv(path, dtype={"seed": "Int64", "layer": "Int64"}, keep_default_na=True)
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return frame


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
    out_csv: str | Path,
    out_dir: str | Path,
    *,
    model: str,
    recipe: str,
    task: str,
    spec: dict,
    modes: Sequence[str],
    layers: Sequence[int] = (-1,),
    seeds: Sequence[int] = (0, 1, 2),
    data_dir: str = "data",
    limit: int | None = None,
) -> pd.DataFrame:
    """Score a task from its encode cache (results/<run>/cache/<model>-<recipe>/<task>/): the rule's entry point."""
    from inbedder import pooling

    cache = pooling.load_cache(cache_dir)
    log.info("cache %s", pooling.describe(cache))
    run = Run(model=model, recipe=recipe, task=task, spec=dict(spec), modes=tuple(modes), layers=tuple(layers),
              seeds=tuple(seeds), data_dir=str(data_dir), limit=limit,
              cache_key=str(cache.meta.get("cache_key") or sha256_json(cache.meta)))
    return evaluate_task(run, lambda mode, layer: pooling.lookup(cache, mode, layer), out_csv, out_dir,
                         answers=answers_of(cache.prompts, cache.answers))


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
