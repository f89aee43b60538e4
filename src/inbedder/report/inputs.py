"""Every file the report reads, by name: the rule render_report declares them (workflow/rules/report.smk)
and passes them in; nothing is found by globbing, so stale models or another profile's artefacts never
reach a page. `declared_inputs` owns the layout of those paths; `ReportInputs` carries them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.datasets import source_manifests, training_inputs
from inbedder.report.suites import projection_task
from inbedder.task_kinds import unavailable_reason
from inbedder.vocabulary import UNTRAINED_RECIPES, split_recipe

REPORT_DIR = Path(__file__).resolve().parents[3] / "report"  # the project's templates, css and captions


@dataclass(frozen=True)
class ReportInputs:
    """The files one report reads (lists may be empty; a missing scores.csv renders as "nothing run")."""

    scores: Path
    skipped: Path | None = None
    paper: Path | None = None  # None: the package's copy of paper_numbers.csv
    template: Path = REPORT_DIR / "index.html.j2"
    css: Path = REPORT_DIR / "style.css"
    training: tuple[Path, ...] = ()  # train_summary.json of each fine-tuned model
    train_logs: tuple[Path, ...] = ()  # train_log.csv, in the order of `training`
    explanations: tuple[Path, ...] = ()  # evaluate's explanations.json of each (model, recipe, task)
    item_data: tuple[Path, ...] = ()  # evaluate's per-item data (<task>.items.parquet) of each (model, recipe, task)
    benchmarks: tuple[Path, ...] = ()  # Snakemake benchmark files of this run's jobs
    manifests: tuple[Path, ...] = ()  # data/raw/<source>/manifest.json of the sources the run read
    fingerprints: tuple[Path, ...] = ()  # data/models/<model>/fingerprint.json of the models the run read
    projection_table: Path | None = None  # the projection task's table (results/<run>/tasks/<task>.parquet)
    projection_caches: tuple[Path, ...] = ()  # that task's encode caches (meta.json), one per model-recipe

    def __post_init__(self) -> None:
        if len(self.training) != len(self.train_logs):
            raise ValueError(f"{len(self.training)} train_summary.json but {len(self.train_logs)} train_log.csv")

    @classmethod
    def from_named(cls, named: Mapping[str, Any]) -> ReportInputs:
        """From named lists of paths (a rule's `input`, or declared_inputs()); `explanations` may name the
        evaluate folders that hold explanations.json."""
        def paths(key: str) -> tuple[Path, ...]:
            value = named.get(key, ())
            return tuple(Path(p) for p in ([value] if isinstance(value, (str, os.PathLike)) else value))

        def one(key: str) -> Path | None:
            found = paths(key)
            if len(found) > 1:
                raise ValueError(f"input {key!r}: one file expected, got {len(found)}")
            return found[0] if found else None

        explanations = tuple(p / "explanations.json" if p.suffix != ".json" else p for p in paths("explanations"))
        given = {"template": one("template"), "css": one("css")}
        return cls(scores=one("scores"), skipped=one("skipped"), paper=one("paper"),
                   **{k: v for k, v in given.items() if v is not None},
                   training=paths("training"), train_logs=paths("train_logs"), explanations=explanations,
                   item_data=paths("item_data"),
                   benchmarks=paths("benchmarks"), manifests=paths("manifests"), fingerprints=paths("fingerprints"),
                   projection_table=one("projection_table"), projection_caches=paths("projection_caches"))


def declared_inputs(
    run_dir: str,
    *,
    jobs: Iterable[tuple[str, str, str]],
    model_folders: Iterable[str],
    manifests: Iterable[str],
    projection: str | None = None,
    data_dir: str = "data",
    items: bool = False,
) -> dict[str, list[str]]:
    """The report's inputs of one run, as named lists of paths.

    jobs: the (model, recipe, task) scored; model_folders: data/models/ folders read (base models, untuned
    models, released checkpoints, the re-encoder); manifests: data/raw/<source>/manifest.json paths;
    projection: the task of the projection figure, when the run scores it (its task table: the rows and
    instructions its caches were encoded from);
    items: whether evaluate's per-item data (`scores/<model>-<recipe>/<task>.items.parquet`) is declared.
    """
    jobs = list(dict.fromkeys(jobs))
    trained = list(dict.fromkeys((m, r) for m, r, _ in jobs if r not in UNTRAINED_RECIPES))
    named = {
        "scores": [f"{run_dir}/scores.csv"],
        "skipped": [f"{run_dir}/skipped.csv"],
        "training": [f"{run_dir}/models/{m}-{r}/train_summary.json" for m, r in trained],
        "train_logs": [f"{run_dir}/models/{m}-{r}/train_log.csv" for m, r in trained],
        "explanations": [f"{run_dir}/scores/{m}-{r}/{t}" for m, r, t in jobs],
        "benchmarks": [f"{run_dir}/benchmarks/train/{m}-{r}.tsv" for m, r in trained]
        + [f"{run_dir}/benchmarks/{stage}/{m}-{r}/{t}.tsv" for stage in ("encode", "evaluate") for m, r, t in jobs],
        "item_data": [f"{run_dir}/scores/{m}-{r}/{t}.items.parquet" for m, r, t in jobs] if items else [],
        "manifests": list(dict.fromkeys(manifests)),
        "fingerprints": [f"{data_dir}/models/{name}/fingerprint.json" for name in dict.fromkeys(model_folders)],
        "projection_table": [],
        "projection_caches": [],
    }
    if projection is not None:
        named["projection_table"] = [f"{run_dir}/tasks/{projection}.parquet"]
        named["projection_caches"] = [f"{run_dir}/cache/{m}-{r}/{t}/meta.json" for m, r, t in jobs if t == projection]
    return named


def data_manifests(config: Mapping[str, Any], tasks: Iterable[str], recipes: Iterable[str],
                   data_dir: str = "data") -> list[str]:
    """Manifests of the sources behind the tasks' prepared tables and the recipes' training tables."""
    datasets = [config["tasks"][t]["dataset"] for t in tasks if "dataset" in config["tasks"][t]]
    for recipe in dict.fromkeys(recipes):
        if recipe not in UNTRAINED_RECIPES:
            tables = training_inputs(recipe, config["recipes"], bool(config["offline"]))
            datasets += [Path(p).stem for p in tables.values()]
    return [p for d in dict.fromkeys(datasets) for p in source_manifests(d, f"{data_dir}/raw")]


def projection_of(config: Mapping[str, Any], tasks: Iterable[str]) -> str | None:
    """The task of the projection figure (`report.projection`, a two-view clustering task) when the run scores
    it, else None."""
    task = projection_task(config["tasks"])
    return task if task in tasks else None


def run_inputs(run_dir: str | os.PathLike, config: Mapping[str, Any], data_dir: str = "data") -> ReportInputs:
    """The inputs of a finished run's report, the jobs taken from its scores.csv (for re-rendering by hand)."""
    import pandas as pd

    run_dir = str(run_dir)
    scores = Path(run_dir) / "scores.csv"
    jobs: list[tuple[str, str, str]] = []
    if scores.is_file():
        # rule_params brings in the training modules, which only this re-render by hand needs
        from inbedder.rule_params import run_name

        frame = pd.read_csv(scores, dtype=str, keep_default_na=False)
        train_seeds = frame["train_seed"] if "train_seed" in frame.columns else [""] * len(frame)
        jobs = sorted({(m, run_name(m, r, int(s) if s else None, config), t)
                       for m, r, s, t in zip(frame["model"], frame["recipe"], train_seeds, frame["task"], strict=True)})
    runnable = [t for t in config["select"]["tasks"] if unavailable_reason(t, dict(config)) is None]
    folders = [m if r != "released" else f"{m}-released" for m, r, _ in jobs]
    folders += [config["re_encoder"]] if config.get("re_encoder") else []
    named = declared_inputs(
        run_dir, jobs=jobs, model_folders=folders, projection=projection_of(config, runnable), data_dir=data_dir,
        items=True,
        manifests=data_manifests(config, runnable, [split_recipe(r)[0] for _, r, _ in jobs], data_dir))
    # by hand, a piece may be missing (a run stopped early): it is left out and the page says what it lacks
    present = {k: [p for p in v if Path(p).exists()] for k, v in named.items()
               if k not in ("scores", "skipped", "projection_table")}
    keep = [i for i, p in enumerate(named["training"]) if Path(p).exists() and Path(named["train_logs"][i]).exists()]
    present["training"] = [named["training"][i] for i in keep]
    present["train_logs"] = [named["train_logs"][i] for i in keep]
    return ReportInputs.from_named({**named, **present})
