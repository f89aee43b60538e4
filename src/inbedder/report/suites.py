"""What the report compares: the paper's columns and their offline analogs (from the task records,
`tasks.<name>.report`), the run key, and the score files.

Scores are stored as fractions (docs/contracts.md: V-measure, success rate, Spearman); the report shows
them x100 like the paper.
"""

from __future__ import annotations

import importlib.resources
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from inbedder.bootstrap import Estimate
from inbedder.fidelity import AUTHORS_RE_ENCODERS
from inbedder.scores import read_scores
from inbedder.task_kinds import kind_class
from inbedder.vocabulary import CI_COLUMNS, ENCODER_MODES, MODES, SCORE_COLUMNS

# `task`: the task's record name (tasks.<name>), or AVG for the table's average.
PAPER_NUMBER_COLUMNS = ("table", "row", "model", "recipe", "mode", "task", "value", "source", "run", "note",
                        "re_encoder")
RE_ENCODE_PREFIX = "re-encode"  # modes that embed the generated answer with a sentence encoder
SCALE = 100.0  # fractions -> the paper's points
NO_SEED = -1
OVERALL_SUBSETS = ("all", "overall", "default", "test", "", "en", "none")

# Decision rules of the claims (stated in the report next to each verdict).
ANSWER_MODES = ("1st-gen", "avg-gen")  # hidden states of the (expected) answer
PROMPT_MODE = "avg-ppt"  # hidden states of the prompt
INBEDDER_RECIPES = ("inbedder", "released")
BASELINE_RECIPES = ("alpaca", "none")
NO_INSTRUCTION_MODE = "plain"  # a sentence encoder fed the text alone
GENERIC_MARGIN = 5.0  # points: "competitive" = generic average at most this far below a baseline's
# ENCODER_MODES are the modes only a sentence encoder has (the encode stage stores them for sentence
# encoders and for no other kind), so a run's mode says whether its model is one.

RECIPE_NAMES = {"inbedder": "InBedder", "released": "InBedder[released]", "alpaca": "alpaca", "none": "untuned"}
RECIPE_ORDER = {"inbedder": 0, "released": 1, "alpaca": 2, "none": 3}
MODE_ORDER = list(MODES)


def mode_rank(mode: str) -> int:
    """Position of a mode in the paper's order (unknown modes last)."""
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


class Run(NamedTuple):
    """One embedder as the report's rows name it: model, recipe and embedding mode."""

    model: str
    recipe: str
    mode: str

    @property
    def encoder(self) -> bool:
        """Whether the run is a sentence encoder's (its mode is one only sentence encoders have)."""
        return self.mode in ENCODER_MODES

    @property
    def label(self) -> str:
        """A row label in the paper's style: `opt-350m-InBedder (1st-gen)`, `e5-large-v2 (plain)`."""
        if self.recipe == "none" and self.encoder:
            return f"{self.model} ({self.mode})"
        return f"{self.model}-{RECIPE_NAMES.get(self.recipe, self.recipe)} ({self.mode})"

    @property
    def sort_key(self) -> tuple:
        """Language models first, then sentence encoders; InBedder, released, alpaca, untuned; modes in paper order."""
        return (self.encoder, self.model, RECIPE_ORDER.get(self.recipe, 9), mode_rank(self.mode), self.mode)

    def with_(self, recipe: str | None = None, mode: str | None = None) -> Run:
        """The same model with another recipe and/or mode."""
        return Run(self.model, self.recipe if recipe is None else recipe, self.mode if mode is None else mode)


def runs_of(frame: pd.DataFrame) -> list[Run]:
    """The run of each row of a score table."""
    return [Run(*key) for key in zip(frame["model"], frame["recipe"], frame["mode"], strict=True)]


# ----------------------------------------------------------------------------------------------------------
# Table layout: the paper's columns and the offline analogs that stand in for them, read from the task records
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of a results table: which task, which metric(s), how subsets combine."""

    label: str
    task: str
    metrics: tuple[str, ...]
    combine: str  # "hmean" (harmonic mean over subsets) | "overall"
    analog_of: str = ""  # the paper task this offline task stands in for
    construction: str = ""  # how an offline task's data is built
    shared: bool = False  # the same task is a column of both suites


@dataclass(frozen=True)
class Suite:
    """A set of instruction-awareness and generic columns (the paper's tasks or their offline analogs)."""

    name: str
    title: str
    ia: tuple[Column, ...]
    generic: tuple[Column, ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task the suite reads."""
        return tuple(c.task for c in self.ia + self.generic)

    @property
    def columns(self) -> tuple[Column, ...]:
        """Its columns, instruction awareness first."""
        return self.ia + self.generic


# The suites a task record (`tasks.<name>.report.suites`) can name, and the parts of a suite (`part`).
SUITE_TITLES = {"paper": "paper tasks", "offline": "offline analogs"}
PARTS = ("instruction_awareness", "generic")
NO_PAPER_TASK = "—"


def _report_record(name: str, tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A task's report record with the column and part of the paper task it stands in for filled in."""
    record = dict(tasks[name]["report"])
    analog = record.get("analog_of")
    if analog is not None:
        paper = (tasks.get(analog) or {}).get("report") or {}
        if "paper" not in paper.get("suites", ()):
            raise ValueError(f"tasks.{name}.report.analog_of: {analog!r} is not a task whose report record "
                             "names the paper suite")
        record = {"column": paper["column"], "part": paper["part"], **record}
    for key in ("column", "part"):
        if key not in record:
            raise ValueError(f"tasks.{name}.report.{key}: required (or analog_of, whose {key} it takes)")
    if record["part"] not in PARTS:
        raise ValueError(f"tasks.{name}.report.part: {record['part']!r} is not one of {PARTS}")
    unknown = sorted(set(record["suites"]) - set(SUITE_TITLES))
    if unknown:
        raise ValueError(f"tasks.{name}.report.suites: {unknown} not among {tuple(SUITE_TITLES)}")
    return record


def suites_of(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Suite]:
    """The paper and offline suites of the task records (`tasks.<name>.report`), columns in config order."""
    parts: dict[str, dict[str, list[Column]]] = {s: {p: [] for p in PARTS} for s in SUITE_TITLES}
    for name, spec in tasks.items():
        if not spec.get("report"):
            continue
        record = _report_record(name, tasks)
        kind = kind_class(spec["kind"], f"tasks.{name}.kind")
        shared = len(set(record["suites"])) > 1
        for suite in dict.fromkeys(record["suites"]):
            analog = record.get("analog_of") or (name if suite == "offline" and shared else "")
            column = Column(record["column"], name, kind.report_metrics, kind.report_combine, analog,
                            record.get("construction", ""), shared)
            same = [c.task for p in PARTS for c in parts[suite][p] if c.label == column.label]
            if same:
                raise ValueError(f"tasks.{name}.report.column: {column.label!r} is also the column of {same[0]} "
                                 f"in the {suite} suite")
            parts[suite][record["part"]].append(column)
    return {s: Suite(s, title, tuple(parts[s]["instruction_awareness"]), tuple(parts[s]["generic"]))
            for s, title in SUITE_TITLES.items()}


def analog_mapping(suite: Suite) -> list[tuple[str, str, str, str]]:
    """The page's mapping of an offline suite: per column, the paper task, the offline task and its construction."""
    return [(c.label, c.analog_of or NO_PAPER_TASK, c.task, c.construction) for c in suite.columns]


def projection_task(tasks: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The task the projection figure draws (`report.projection`, a task of labelled views), or None."""
    return next((name for name, spec in tasks.items() if (spec.get("report") or {}).get("projection")
                 and kind_class(spec["kind"], f"tasks.{name}.kind").labelled_views), None)


IA_AVG, GEN_AVG = "IA", "GEN"
AVG = "Avg"  # paper_numbers.csv: the `task` of a table's average


@dataclass
class Cell:
    """One aggregated score (x100): mean over seeds, its sd, its bootstrap CI, and why it is missing when it is."""

    value: float | None = None
    sd: float = 0.0
    n_seeds: int = 0
    metric: str = ""
    note: str = ""
    reason: str = ""
    est: Estimate | None = None  # bootstrap over items and seeds (x100); None without per-item data
    ci_reason: str = ""  # why there is no CI

    @property
    def ok(self) -> bool:
        """Whether a number exists."""
        return self.value is not None and math.isfinite(self.value)

    @property
    def has_ci(self) -> bool:
        """Whether the number carries a CI."""
        return self.ok and self.est is not None

    @property
    def low(self) -> float | None:
        """Lower CI bound (x100)."""
        return self.est.low if self.est is not None else None

    @property
    def high(self) -> float | None:
        """Upper CI bound (x100)."""
        return self.est.high if self.est is not None else None

    @property
    def few_items(self) -> bool:
        """Whether the CI rests on fewer than bootstrap.MIN_ITEMS items."""
        return self.est is not None and self.est.few_items


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def empty_scores() -> pd.DataFrame:
    """A score table with no rows, typed as load_scores types it."""
    df = pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "n", *CI_COLUMNS) else str)
                       for c in SCORE_COLUMNS + CI_COLUMNS})
    df["seed"] = df["seed"].astype(int)
    df["train_seed"] = df["train_seed"].astype(int)
    return df


def load_scores(path: str | os.PathLike) -> pd.DataFrame:
    """scores.csv as the report uses it: labels as stripped strings, no seed (k-means or training) as NO_SEED (-1)."""
    df = read_scores(path)
    seed = pd.to_numeric(df["seed"], errors="coerce").fillna(NO_SEED)
    df["seed"] = seed.where(seed >= 0, NO_SEED).astype(int)
    df["train_seed"] = pd.to_numeric(df["train_seed"], errors="coerce").fillna(NO_SEED).astype(int)
    for col in ("model", "recipe", "mode", "layer", "task", "subset", "metric"):
        df[col] = df[col].astype("string").fillna("").astype(str).str.strip()
    return df


def load_skipped(path: str | os.PathLike | None) -> dict[str, str]:
    """Tasks that could not run and why: skipped.csv (task, reason), written by collect_scores."""
    if path is None or not Path(path).is_file():
        return {}
    sk = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("task", "reason"):
        if col not in sk.columns:
            raise ValueError(f"{path}: missing column {col!r}; expected task, reason")
    return {task: reason or "could not run" for task, reason in zip(sk["task"], sk["reason"], strict=True)}


def load_paper_numbers(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's numbers the report compares against (package data unless a path is given)."""
    if path is None:
        text = importlib.resources.files("inbedder").joinpath("paper_numbers.csv").read_text(encoding="utf-8")
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        where = "inbedder/paper_numbers.csv"
    else:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        where = str(path)
    missing = [c for c in PAPER_NUMBER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}")
    df["value"] = pd.to_numeric(df["value"], errors="raise")
    reenc = df["mode"].str.startswith(RE_ENCODE_PREFIX)
    bad = df[reenc & ~df["re_encoder"].isin(list(AUTHORS_RE_ENCODERS))]
    if len(bad):
        first = bad.iloc[0]
        raise ValueError(f"{where}: column 're_encoder' must name the re-encoder of every re-encode row "
                         f"({', '.join(sorted(AUTHORS_RE_ENCODERS))}); row {first['row']!r} ({first['task']}) "
                         f"has {first['re_encoder']!r}")
    return df


def num(x: object) -> float | None:
    """A finite float, or None (for missing, empty or non-numeric values)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def as_int(text: str) -> int | None:
    """A layer (or other) number written as text, or None."""
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def headline_layer(scores: pd.DataFrame) -> pd.DataFrame:
    """Keep one layer per (model, recipe, mode): the last one ("-1" or the largest index)."""
    if scores.empty:
        return scores
    keep = []
    for _, grp in scores.groupby(["model", "recipe", "mode"], sort=False):
        layers = list(dict.fromkeys(grp["layer"]))
        if len(layers) > 1:
            chosen = "-1" if "-1" in layers else max(layers, key=lambda lay: (as_int(lay) is not None,
                                                                              as_int(lay) or 0))
            grp = grp[grp["layer"] == chosen]
        keep.append(grp)
    return pd.concat(keep, ignore_index=True)
