"""Report stage: every score beside the paper's, a verdict per claim, figures and provenance, as one HTML page.

Reads only what docs/contracts.md names: `results/<run>/scores.csv` (+ `skipped.csv`), the training
summaries and logs, Snakemake's benchmark files, the cluster explanations, the data manifests, the config,
and the project's own copy of the paper's numbers (`paper_numbers.csv`, package data). A missing piece is
shown as "not run" with its reason; nothing is ever filled in.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.resources
import io
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inbedder.files import sha256_file, write_text

SCORE_COLUMNS = ("model", "recipe", "mode", "layer", "task", "subset", "metric", "value", "seed", "n")
PAPER_NUMBER_COLUMNS = ("table", "row", "model", "recipe", "mode", "column", "value", "source", "run", "note")

# Decision rules of the claims (stated in the report next to each verdict).
ANSWER_MODES = ("1st-gen", "avg-gen")  # hidden states of the (expected) answer
PROMPT_MODE = "avg-ppt"  # hidden states of the prompt
INBEDDER_RECIPES = ("inbedder", "released")
BASELINE_RECIPES = ("alpaca", "none")
NO_INSTRUCTION_MODE = "plain"  # a sentence encoder fed the text alone
GENERIC_MARGIN = 5.0  # points: "competitive" = generic average at most this far below a baseline's

# Metrics that live in [0, 1] as computed (sklearn, mteb); the report shows them x100 like the paper.
FRACTION_METRICS = frozenset(
    {"success_rate", "v_measure", "spearman", "cosine_spearman", "map", "map_at_1000", "main_score",
     "ndcg_at_10", "mrr_at_10", "accuracy", "dci", "dii"}
)
NO_SEED = -1
OVERALL_SUBSETS = ("all", "overall", "default", "test", "", "en", "none")
ROBUSTNESS_GROUPS = ("correct", "implicit", "incorrect")

# The project's report/ folder (jinja2 template and css); the rule passes its own copy as inputs.
DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "report"


# ----------------------------------------------------------------------------------------------------------
# Table layout: the paper's columns and the offline analogs that stand in for them
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of a results table: which task, which metric(s), how subsets combine."""

    label: str
    task: str
    metrics: tuple[str, ...]
    combine: str  # "hmean" (harmonic mean over subsets) | "overall"
    analog_of: str = ""  # the paper task this offline task stands in for


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


_PAIRS = ("spearman", "cosine_spearman", "main_score")
_RERANK = ("map", "map_at_1000", "main_score")
_CLUSTER = ("v_measure", "main_score")

PAPER_SUITE = Suite(
    name="paper",
    title="paper tasks",
    ia=(
        Column("I.STSB", "InstructSTSB", _PAIRS, "overall"),
        Column("IntEmo", "IntentEmotion", ("success_rate",), "hmean"),
        Column("NYT", "NYTClustering", ("v_measure",), "hmean"),
    ),
    generic=(
        Column("AskU", "AskUbuntuDupQuestions", _RERANK, "overall"),
        Column("SciD", "SciDocsRR", _RERANK, "overall"),
        Column("StackO", "StackOverflowDupQuestions", _RERANK, "overall"),
        Column("20News", "TwentyNewsgroupsClustering", _CLUSTER, "overall"),
    ),
)

OFFLINE_SUITE = Suite(
    name="offline",
    title="offline analogs",
    ia=(
        Column("I.STSB", "NLUPPInstructedPairs", _PAIRS, "overall", analog_of="InstructSTSB"),
        Column("IntEmo", "NLUPPTwoViewTriplets", ("success_rate",), "hmean", analog_of="IntentEmotion"),
        Column("NYT", "NLUPPTwoViewClustering", ("v_measure",), "hmean", analog_of="NYTClustering"),
    ),
    generic=(
        Column("20News", "TwentyNewsgroupsClustering", _CLUSTER, "overall",
               analog_of="TwentyNewsgroupsClustering"),
        Column("STS-B", "STSBenchmark", ("cosine_spearman", "spearman", "main_score"), "overall"),
        Column("B77", "Banking77Clustering", _CLUSTER, "overall"),
    ),
)
SUITES = (PAPER_SUITE, OFFLINE_SUITE)
IA_AVG, GEN_AVG = "IA", "GEN"


# ----------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------

RunKey = tuple[str, str, str]  # (model, recipe, mode)


@dataclass
class Cell:
    """One aggregated score (x100): mean over seeds, its sd, and why it is missing when it is."""

    value: float | None = None
    sd: float = 0.0
    n_seeds: int = 0
    metric: str = ""
    note: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether a number exists."""
        return self.value is not None and math.isfinite(self.value)


@dataclass
class Evidence:
    """One comparison that fed a verdict."""

    label: str
    value: float | None
    reference_label: str
    reference: float | None
    threshold: float
    holds: bool | None
    detail: str = ""

    @property
    def diff(self) -> float | None:
        """value - reference, where both exist."""
        if self.value is None or self.reference is None:
            return None
        return self.value - self.reference


@dataclass
class ClaimResult:
    """A claim, the rule that decides it, the verdict and the numbers that decided it."""

    number: int
    title: str
    statement: str
    rule: str
    scope: str
    verdict: str  # "supported" | "not supported" | "not tested"
    evidence: list[Evidence] = field(default_factory=list)
    reason: str = ""


CLAIMS = {
    1: ("QA fine-tuning improves instruction following",
        ("Fine-tuning on short abstractive QA answers (InBedder) makes embeddings follow the instruction better "
         "than the same model tuned on Alpaca or left untuned.")),
    2: ("Answers beat prompts",
        "Hidden states of the (expected) answer embed better than those of the prompt."),
    3: ("Filtering helps a little",
        ("Dropping uninformative generation steps (stopwords, instruction tokens, fillers) improves the "
         "embedding slightly.")),
    4: ("Instruction-aware and competitive",
        ("InBedder is instruction-aware (above the no-instruction baselines) while staying competitive on "
         "generic embedding tasks.")),
}


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a tidy scores.csv, check its columns, and type value/seed/n (empty seed -> -1)."""
    path = Path(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(SCORE_COLUMNS)}")
    df = df[list(SCORE_COLUMNS)].copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    seed = pd.to_numeric(df["seed"], errors="coerce").fillna(NO_SEED)
    df["seed"] = seed.where(seed >= 0, NO_SEED).astype(int)
    df["n"] = pd.to_numeric(df["n"], errors="coerce")
    for col in ("model", "recipe", "mode", "layer", "task", "subset", "metric"):
        df[col] = df[col].astype(str).str.strip()
    return df


def load_skipped(path: str | os.PathLike | None, scores: pd.DataFrame | None = None) -> dict[str, str]:
    """Tasks that could not run and why: skipped.csv (task, reason) plus status rows of scores.csv."""
    reasons: dict[str, str] = {}
    if scores is not None and len(scores):
        status = scores[scores["metric"] == "status"]
        for task, subset in zip(status["task"], status["subset"], strict=True):
            reasons.setdefault(task, subset or "could not run")
    if path is not None and Path(path).is_file():
        sk = pd.read_csv(path, dtype=str, keep_default_na=False)
        for col in ("task", "reason"):
            if col not in sk.columns:
                raise ValueError(f"{path}: missing column {col!r}; expected task, reason")
        for task, reason in zip(sk["task"], sk["reason"], strict=True):
            reasons[task] = reason or "could not run"
    return reasons


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
    return df


def value_scale(scores: pd.DataFrame) -> float:
    """100 when the fraction metrics are stored in [0, 1] (sklearn/mteb), 1 when already in points."""
    vals = scores.loc[scores["metric"].isin(FRACTION_METRICS), "value"].dropna()
    if vals.empty:
        return 100.0
    return 100.0 if float(vals.abs().max()) <= 1.0 + 1e-9 else 1.0


def headline_layer(scores: pd.DataFrame) -> pd.DataFrame:
    """Keep one layer per (model, recipe, mode): the last one ("-1" or the largest index)."""
    if scores.empty:
        return scores
    keep = []
    for _, grp in scores.groupby(["model", "recipe", "mode"], sort=False):
        layers = list(dict.fromkeys(grp["layer"]))
        if len(layers) == 1:
            keep.append(grp)
            continue
        numeric = {lay: _as_int(lay) for lay in layers}
        if "-1" in layers or "last" in layers:
            chosen = "-1" if "-1" in layers else "last"
        else:
            chosen = max(layers, key=lambda lay: (numeric[lay] is not None, numeric[lay] or 0))
        keep.append(grp[grp["layer"] == chosen])
    return pd.concat(keep, ignore_index=True)


def _as_int(text: str) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------
# Aggregation: per run and column, a Cell
# ----------------------------------------------------------------------------------------------------------


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is <= 0 (as for a score of nothing)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("harmonic mean of nothing")
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), sd


def column_cells(scores: pd.DataFrame, column: Column, scale: float = 100.0) -> dict[RunKey, Cell]:
    """Aggregate one column for every run that has it: metric by preference, subsets combined, seeds averaged."""
    task_rows = scores[(scores["task"] == column.task) & scores["value"].notna()]
    out: dict[RunKey, Cell] = {}
    for run, grp in task_rows.groupby(["model", "recipe", "mode"], sort=False):
        metric = next((m for m in column.metrics if (grp["metric"] == m).any()), None)
        if metric is None:
            continue
        rows = grp[grp["metric"] == metric]
        per_seed, note = _per_seed_values(rows, column.combine)
        if not per_seed:
            continue
        mean, sd = _mean_sd([v * scale for v in per_seed.values()])
        n_seeds = len([s for s in per_seed if s != NO_SEED])
        out[tuple(run)] = Cell(value=mean, sd=sd, n_seeds=n_seeds, metric=metric, note=note)
    return out


def _per_seed_values(rows: pd.DataFrame, combine: str) -> tuple[dict[int, float], str]:
    """One value per seed for a run's rows of one metric, and a note on how subsets were combined."""
    subsets = list(dict.fromkeys(rows["subset"]))
    by_seed: dict[int, float] = {}
    if combine == "hmean":
        if "hmean" in subsets:
            sel = rows[rows["subset"] == "hmean"]
            for seed, grp in sel.groupby("seed"):
                by_seed[int(seed)] = float(grp["value"].mean())
            return by_seed, ""
        parts = rows[rows["subset"] != "hmean"]
        if parts["subset"].nunique() < 2:
            return {}, ""
        for seed, grp in parts.groupby("seed"):
            per_subset = grp.groupby("subset")["value"].mean()
            by_seed[int(seed)] = hmean(per_subset.tolist())
        return by_seed, "harmonic mean computed by the report from " + ", ".join(sorted(parts["subset"].unique()))
    chosen = next((s for s in OVERALL_SUBSETS if s in subsets), None)
    if chosen is None and len(subsets) == 1:
        chosen = subsets[0]
    if chosen is not None:
        sel = rows[rows["subset"] == chosen]
        for seed, grp in sel.groupby("seed"):
            by_seed[int(seed)] = float(grp["value"].mean())
        return by_seed, ""
    for seed, grp in rows.groupby("seed"):
        by_seed[int(seed)] = float(grp.groupby("subset")["value"].mean().mean())
    return by_seed, "mean over subsets " + ", ".join(sorted(subsets))


def average_cell(cells: Sequence[Cell], labels: Sequence[str]) -> Cell:
    """Mean of cells (sd combined as independent errors); missing when any part is missing."""
    missing = [lab for lab, c in zip(labels, cells, strict=True) if not c.ok]
    if missing:
        return Cell(reason="missing " + ", ".join(missing))
    vals = [c.value for c in cells]
    sd = math.sqrt(sum(c.sd**2 for c in cells)) / len(cells)
    return Cell(value=float(np.mean(vals)), sd=sd, n_seeds=max(c.n_seeds for c in cells))


@dataclass
class SuiteScores:
    """Per run of a suite: a Cell per column label plus the two averages (IA, GEN)."""

    suite: Suite
    runs: dict[RunKey, dict[str, Cell]]
    metrics_used: dict[str, list[str]]
    notes: dict[str, list[str]]

    def get(self, run: RunKey, label: str) -> Cell:
        """The cell of a run and column (an empty cell when absent)."""
        return self.runs.get(run, {}).get(label, Cell())


def suite_scores(scores: pd.DataFrame, suite: Suite, scale: float = 100.0) -> SuiteScores:
    """Cells of every run with at least one score in the suite, and the IA / generic averages."""
    per_col = {c.label: column_cells(scores, c, scale) for c in suite.ia + suite.generic}
    runs: dict[RunKey, dict[str, Cell]] = {}
    for label, cells in per_col.items():
        for run, cell in cells.items():
            runs.setdefault(run, {})[label] = cell
    metrics_used: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    for label, cells in per_col.items():
        metrics_used[label] = sorted({c.metric for c in cells.values()})
        notes[label] = sorted({c.note for c in cells.values() if c.note})
    for run, cells in runs.items():
        ia_labels = [c.label for c in suite.ia]
        gen_labels = [c.label for c in suite.generic]
        cells[IA_AVG] = average_cell([cells.get(lab, Cell()) for lab in ia_labels], ia_labels)
        cells[GEN_AVG] = average_cell([cells.get(lab, Cell()) for lab in gen_labels], gen_labels)
    return SuiteScores(suite=suite, runs=runs, metrics_used=metrics_used, notes=notes)


def paper_suite_scores(paper: pd.DataFrame) -> SuiteScores:
    """The paper's own numbers arranged like our scores (columns of the paper tables, IA and GEN averages)."""
    runs: dict[RunKey, dict[str, Cell]] = {}
    order = {"instruction_awareness": 0, "generic": 0, "modes": 1, "filtering": 1}
    for row in sorted(paper.itertuples(index=False), key=lambda r: order.get(r.table, 2)):
        run = (row.model, row.recipe, row.mode)
        col = row.column
        if col == "Avg":
            col = GEN_AVG if row.table == "generic" else IA_AVG
        cells = runs.setdefault(run, {})
        if col not in cells:  # headline tables win over the ablation rows
            cells[col] = Cell(value=float(row.value), note=row.note)
    return SuiteScores(suite=PAPER_SUITE, runs=runs, metrics_used={}, notes={})


# ----------------------------------------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------------------------------------


def run_label(run: RunKey, kinds: Mapping[str, str] | None = None) -> str:
    """A row label in the paper's style: `opt-350m-InBedder (1st-gen)`, `e5-large-v2 (plain)`."""
    model, recipe, mode = run
    names = {"inbedder": "InBedder", "released": "InBedder[released]", "alpaca": "alpaca", "none": "untuned"}
    kind = (kinds or {}).get(model, "")
    if recipe == "none" and (kind == "sentence-encoder" or mode in ("plain", "prefixed")):
        return f"{model} ({mode})"
    return f"{model}-{names.get(recipe, recipe)} ({mode})"


def _best_mode(book: SuiteScores, model: str, recipe: str, modes: Iterable[str] | None = None) -> RunKey | None:
    """The run of (model, recipe) with the highest instruction-awareness average, optionally among modes."""
    allowed = set(modes) if modes is not None else None
    cands = [
        (run, cells[IA_AVG].value) for run, cells in book.runs.items()
        if run[0] == model and run[1] == recipe and cells.get(IA_AVG, Cell()).ok
        and (allowed is None or run[2] in allowed)
    ]
    if not cands:
        return None
    return max(cands, key=lambda rv: rv[1])[0]


def _verdict(evidence: list[Evidence]) -> str:
    decided = [e.holds for e in evidence if e.holds is not None]
    if not decided:
        return "not tested"
    return "supported" if all(decided) else "not supported"


def _cmp(book: SuiteScores, a: RunKey, b: RunKey, kinds: Mapping[str, str], key: str = IA_AVG,
         margin: float | None = None, detail: str = "") -> Evidence:
    """Compare run a with run b on `key`: a must lead by more than the larger seed sd, or (with a margin)
    trail by at most `margin` points."""
    ca, cb = book.get(a, key), book.get(b, key)
    threshold = max(ca.sd, cb.sd) if margin is None else -margin
    holds: bool | None = None
    if ca.ok and cb.ok:
        diff = ca.value - cb.value
        holds = diff > threshold if margin is None else diff >= threshold
    return Evidence(run_label(a, kinds), ca.value, run_label(b, kinds), cb.value,
                    threshold=threshold, holds=holds, detail=detail)


def claim_1(book: SuiteScores, kinds: Mapping[str, str], scope: str) -> ClaimResult:
    """Claim 1: InBedder's best IA average beats Alpaca-tuned and untuned (each at its best mode) by > seed sd."""
    evidence: list[Evidence] = []
    lacking: list[str] = []
    models = sorted({m for (m, r, _) in book.runs if r in INBEDDER_RECIPES})
    for model in models:
        for recipe in INBEDDER_RECIPES:
            inb = _best_mode(book, model, recipe)
            if inb is None:
                continue
            for base_recipe in BASELINE_RECIPES:
                base = _best_mode(book, model, base_recipe)
                if base is None:
                    lacking.append(f"{model}: no {'untuned' if base_recipe == 'none' else base_recipe} run")
                    continue
                evidence.append(_cmp(book, inb, base, kinds, detail="IA average, each recipe at its best mode"))
    title, statement = CLAIMS[1]
    rule = ("Supported when, for every model with an InBedder run, InBedder's instruction-awareness average "
            "(its best mode) exceeds that of each baseline of the same model that was run (Alpaca-tuned, "
            "untuned; each at its best mode) by more than the larger of the two seed sds; not supported if "
            "any comparison fails; not tested without a comparison.")
    return ClaimResult(1, title, statement, rule, scope, _verdict(evidence), evidence, "; ".join(lacking))


def claim_2(book: SuiteScores, kinds: Mapping[str, str], scope: str) -> ClaimResult:
    """Claim 2: the best answer mode (1st-gen / avg-gen) beats the prompt mode avg-ppt by > seed sd."""
    evidence: list[Evidence] = []
    lacking: list[str] = []
    pairs = sorted({(m, r) for (m, r, _) in book.runs if r in INBEDDER_RECIPES})
    for model, recipe in pairs:
        ans = _best_mode(book, model, recipe, ANSWER_MODES)
        ppt = (model, recipe, PROMPT_MODE)
        if ans is None or not book.get(ppt, IA_AVG).ok:
            lacking.append(f"{model}-{recipe}: needs {'/'.join(ANSWER_MODES)} and {PROMPT_MODE}")
            continue
        evidence.append(_cmp(book, ans, ppt, kinds, detail="IA average, answer vs prompt hidden states"))
    title, statement = CLAIMS[2]
    rule = (f"Supported when, for every InBedder model run in both, the better answer mode "
            f"({' or '.join(ANSWER_MODES)}) has an instruction-awareness average above that of the prompt mode "
            f"{PROMPT_MODE} by more than the larger seed sd; not supported if any model fails.")
    return ClaimResult(2, title, statement, rule, scope, _verdict(evidence), evidence, "; ".join(lacking))


def claim_3(book: SuiteScores, kinds: Mapping[str, str], scope: str) -> ClaimResult:
    """Claim 3: the mean gain of <mode>+filter over <mode> (all pairs) is positive and above the seed sd."""
    pairs: list[Evidence] = []
    for run, cells in sorted(book.runs.items()):
        model, recipe, mode = run
        if not mode.endswith("+filter") or not cells.get(IA_AVG, Cell()).ok:
            continue
        base = (model, recipe, mode[: -len("+filter")])
        if not book.get(base, IA_AVG).ok:
            continue
        ev = _cmp(book, run, base, kinds, detail="IA average, filtered vs unfiltered")
        ev.holds = None  # pairs are reported; the verdict is on their mean gain
        pairs.append(ev)
    title, statement = CLAIMS[3]
    rule = ("Supported when the mean gain of each <mode>+filter over the same <mode> (same model and recipe), "
            "averaged over every such pair run, is positive and larger than the largest seed sd among the "
            "pairs; not supported otherwise; not tested without a pair.")
    if not pairs:
        return ClaimResult(3, title, statement, rule, scope, "not tested", [], "no <mode>+filter run with its base")
    gain = float(np.mean([e.diff for e in pairs]))
    thr = max(e.threshold for e in pairs)
    summary = Evidence(f"mean gain over {len(pairs)} pair(s)", gain, "no change", 0.0, threshold=thr, holds=gain > thr,
                       detail="mean of the differences above")
    verdict = "supported" if summary.holds else "not supported"
    return ClaimResult(3, title, statement, rule, scope, verdict, pairs + [summary])


def claim_4(book: SuiteScores, kinds: Mapping[str, str], scope: str, margin: float = GENERIC_MARGIN) -> ClaimResult:
    """Claim 4: best InBedder run beats every no-instruction baseline on IA and is within `margin` on generic."""
    title, statement = CLAIMS[4]
    rule = (f"Take the InBedder run with the highest instruction-awareness average. Supported when, against "
            f"every no-instruction baseline run (a sentence encoder in mode `{NO_INSTRUCTION_MODE}`), its "
            f"instruction-awareness average is higher by more than the larger seed sd AND its generic average is "
            f"at most {margin:.1f} points below the baseline's; not supported if either fails; not tested when a "
            f"number is missing.")
    inb_runs = [r for r, c in book.runs.items() if r[1] in INBEDDER_RECIPES and c.get(IA_AVG, Cell()).ok]
    baselines = [r for r, c in book.runs.items() if r[2] == NO_INSTRUCTION_MODE and r[1] == "none"
                 and c.get(IA_AVG, Cell()).ok]
    if not inb_runs or not baselines:
        why = "no InBedder run with an IA average" if not inb_runs else "no no-instruction baseline run"
        return ClaimResult(4, title, statement, rule, scope, "not tested", [], why)
    best = max(inb_runs, key=lambda r: book.get(r, IA_AVG).value)
    evidence: list[Evidence] = []
    for base in sorted(baselines):
        evidence.append(_cmp(book, best, base, kinds, IA_AVG, detail="instruction-awareness average"))
        ev = _cmp(book, best, base, kinds, GEN_AVG, margin=margin,
                  detail=f"generic average (within {margin:.1f} points)")
        evidence.append(ev)
    decided = [e.holds for e in evidence]
    if any(h is False for h in decided):
        verdict = "not supported"
    elif any(h is None for h in decided):
        verdict = "not tested"
    else:
        verdict = "supported"
    reason = "" if verdict != "not tested" else "a generic average is missing (generic tasks not all run)"
    return ClaimResult(4, title, statement, rule, scope, verdict, evidence, reason)


def evaluate_claims(book: SuiteScores, kinds: Mapping[str, str], scope: str,
                    margin: float = GENERIC_MARGIN) -> list[ClaimResult]:
    """All four claims on one set of numbers (all "not tested" when no run has an IA average)."""
    results = [claim_1(book, kinds, scope), claim_2(book, kinds, scope), claim_3(book, kinds, scope),
               claim_4(book, kinds, scope, margin)]
    if not any(cells.get(IA_AVG, Cell()).ok for cells in book.runs.values()):
        labels = ", ".join(f"{c.label} ({c.task})" for c in book.suite.ia)
        for res in results:
            res.verdict, res.evidence = "not tested", []
            res.reason = f"no instruction-awareness average: {labels} not all scored in this run"
    return results


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------

RECIPE_ORDER = {"inbedder": 0, "released": 1, "alpaca": 2, "none": 3}
MODE_ORDER = ["1st-gen", "avg-gen", "last-gen", "avg-ppt", "avg-all", "re-encode", "1st-gen+filter",
              "avg-gen+filter", "last-gen+filter", "avg-all+filter", "re-encode+filter", "plain", "prefixed"]


def _mode_rank(mode: str) -> int:
    return MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)


def run_sort_key(run: RunKey, kinds: Mapping[str, str] | None = None) -> tuple:
    """Language models first, then sentence encoders; InBedder, released, alpaca, untuned; modes in paper order."""
    model, recipe, mode = run
    encoder = (kinds or {}).get(model) == "sentence-encoder" or mode in ("plain", "prefixed")
    return (encoder, model, RECIPE_ORDER.get(recipe, 9), _mode_rank(mode), mode)


@dataclass
class CompareCell:
    """Our number beside the paper's, and the difference."""

    ours: Cell
    paper: float | None

    @property
    def diff(self) -> float | None:
        """ours - paper where both exist."""
        if not self.ours.ok or self.paper is None:
            return None
        return self.ours.value - self.paper


@dataclass
class TableRow:
    """One row of a results table."""

    label: str
    cells: list[CompareCell]
    note: str = ""
    paper_label: str = ""
    group: str = ""
    delta: float | None = None  # offline tables: IA average minus that of the untuned model, same mode
    delta_ref: str = ""


@dataclass
class TableView:
    """A results table ready for the template."""

    key: str
    title: str
    columns: list[str]
    headers: list[str]
    rows: list[TableRow]
    footnotes: list[str]
    with_paper: bool
    best: dict[str, float] = field(default_factory=dict)
    missing_columns: list[tuple[str, str]] = field(default_factory=list)  # (column, reason) of empty columns


class MissingReasons:
    """Why a run has no number for a task: skipped task, task or model not selected, mode not run."""

    def __init__(self, scores: pd.DataFrame, skipped: Mapping[str, str], selected_tasks: Sequence[str] | None,
                 selected_models: Sequence[str] | None):
        self.skipped = dict(skipped)
        self.selected_tasks = set(selected_tasks) if selected_tasks else None
        self.selected_models = set(selected_models) if selected_models else None
        self.models = set(scores["model"])
        self.runs = set(zip(scores["model"], scores["recipe"], scores["mode"], strict=True))
        self.tasks = set(scores.loc[scores["metric"] != "status", "task"])

    def task_reason(self, task: str) -> str | None:
        """Why no run at all has the task (skipped, unavailable, not selected), or None when some run has it."""
        if task in self.tasks:
            return None
        if task in self.skipped:
            return self.skipped[task]
        if self.selected_tasks is not None and task not in self.selected_tasks:
            return "task not selected in this run"
        return "task not scored in this run"

    def reason(self, run: RunKey, task: str) -> str:
        """The reason a (run, task) cell is empty."""
        model, recipe, mode = run
        task_level = self.task_reason(task)
        if task_level:
            return task_level
        if model not in self.models:
            return "model not selected in this run" if (self.selected_models is None or model not in
                                                        self.selected_models) else "model has no scores"
        if run not in self.runs:
            return f"{recipe} / {mode} not run"
        if task in self.skipped:  # skipped for some models only (e.g. no mode of theirs is scored)
            return self.skipped[task]
        return "no score for this run"


def _cell_with_reason(book: SuiteScores, run: RunKey, label: str, task: str, reasons: MissingReasons) -> Cell:
    """The run's cell, or an empty cell that says why it is empty."""
    cell = book.get(run, label)
    return cell if cell.ok else Cell(reason=reasons.reason(run, task))


def paper_table(paper: pd.DataFrame, table: str, ours: SuiteScores, reasons: MissingReasons,
                kinds: Mapping[str, str], data_notes: Mapping[str, str] | None = None) -> TableView:
    """The paper's table (its rows and columns) with our number, the paper's and the difference per cell."""
    if table == "instruction_awareness":
        cols, avg_key, title = PAPER_SUITE.ia, IA_AVG, "Instruction awareness (paper tasks)"
    elif table == "generic":
        cols, avg_key, title = PAPER_SUITE.generic, GEN_AVG, "Generic embedding tasks (paper tasks)"
    else:
        raise ValueError(f"unknown paper table {table!r}; expected instruction_awareness or generic")
    labels = [c.label for c in cols] + ["Avg"]
    sub = paper[paper["table"] == table]
    task_level = {col.label: reasons.task_reason(col.task) for col in cols}
    shared = set(OFFLINE_SUITE.tasks)

    def note(cells: Sequence[CompareCell], extra: Sequence[str] = ()) -> str:
        run_level = [c.ours.reason for c, col in zip(cells, cols, strict=False)
                     if c.ours.reason and c.ours.reason != task_level[col.label]]
        return "; ".join(list(dict.fromkeys(run_level)) + list(extra))

    rows: list[TableRow] = []
    matched: set[RunKey] = set()
    for paper_label, grp in sub.groupby("row", sort=False):
        first = grp.iloc[0]
        paper_vals = dict(zip(grp["column"], grp["value"], strict=True))
        notes = [f"{c}: {n}" for c, n in zip(grp["column"], grp["note"], strict=True) if n]
        candidates = [(first["model"], first["recipe"], first["mode"])]
        if first["recipe"] == "inbedder":
            candidates.append((first["model"], "released", first["mode"]))
        found = [r for r in candidates if r in ours.runs]
        for run in found or candidates[:1]:
            matched.add(run)
            cells = [CompareCell(_cell_with_reason(ours, run, c.label, c.task, reasons), paper_vals.get(c.label))
                     for c in cols]
            avg = ours.get(run, avg_key)
            cells.append(CompareCell(avg if avg.ok else Cell(reason=avg.reason), paper_vals.get("Avg")))
            label = paper_label if run == candidates[0] else run_label(run, kinds)
            rows.append(TableRow(label=label, cells=cells, note=note(cells, notes), paper_label=paper_label,
                                 group="paper"))
    # Runs of ours without a paper row: only those with a paper-only task (not the shared offline 20News).
    extra = sorted((r for r in ours.runs if r not in matched
                    and any(ours.get(r, c.label).ok for c in cols if c.task not in shared)),
                   key=lambda r: run_sort_key(r, kinds))
    for run in extra:
        cells = [CompareCell(_cell_with_reason(ours, run, c.label, c.task, reasons), None) for c in cols]
        avg = ours.get(run, avg_key)
        cells.append(CompareCell(avg if avg.ok else Cell(reason=avg.reason), None))
        rows.append(TableRow(label=run_label(run, kinds), cells=cells, note=note(cells), group="this run only"))
    missing_columns = [(c.label, task_level[c.label]) for c in cols if task_level[c.label]]
    footnotes = [f"Paper numbers: {sub['source'].iloc[0]}." if len(sub) else "No paper numbers."]
    for col in cols:
        used = ours.metrics_used.get(col.label) or []
        if used:
            footnotes.append(f"{col.label} ({col.task}): metric {', '.join(used)}"
                             + (f"; {'; '.join(ours.notes[col.label])}" if ours.notes.get(col.label) else "")
                             + (f"; {data_notes[col.task]}" if data_notes and col.task in data_notes else ""))
    headers = [f"{c.label}" for c in cols] + ["Avg"]
    return TableView(key=table, title=title, columns=labels, headers=headers, rows=rows, footnotes=footnotes,
                     with_paper=True, missing_columns=missing_columns)


def offline_table(ours: SuiteScores, part: str, reasons: MissingReasons, kinds: Mapping[str, str],
                  data_notes: Mapping[str, str] | None = None) -> TableView:
    """Our offline-analog numbers in the paper's layout (one row per model, recipe and mode)."""
    suite = ours.suite
    if part == "ia":
        cols, avg_key, title = suite.ia, IA_AVG, "Instruction awareness (offline analogs)"
    elif part == "generic":
        cols, avg_key, title = suite.generic, GEN_AVG, "Generic embedding tasks (offline analogs)"
    else:
        raise ValueError(f"unknown table part {part!r}; expected ia or generic")
    runs = sorted((r for r in ours.runs if any(ours.get(r, c.label).ok for c in cols)),
                  key=lambda r: run_sort_key(r, kinds))
    task_level = {col.label: reasons.task_reason(col.task) for col in cols}
    rows: list[TableRow] = []
    for run in runs:
        cells = [CompareCell(_cell_with_reason(ours, run, c.label, c.task, reasons), None) for c in cols]
        avg = ours.get(run, avg_key)
        cells.append(CompareCell(avg if avg.ok else Cell(reason=avg.reason), None))
        row_reasons = list(dict.fromkeys(c.ours.reason for c, col in zip(cells, cols, strict=False)
                                         if c.ours.reason and c.ours.reason != task_level[col.label]))
        row = TableRow(label=run_label(run, kinds), cells=cells, note="; ".join(row_reasons), group=run[0])
        base = (run[0], "none", run[2])
        if run[1] != "none" and avg.ok and ours.get(base, avg_key).ok:
            row.delta = avg.value - ours.get(base, avg_key).value
            row.delta_ref = run_label(base, kinds)
        rows.append(row)
    best = {}
    for i, lab in enumerate([c.label for c in cols] + ["Avg"]):
        vals = [r.cells[i].ours.value for r in rows if r.cells[i].ours.ok]
        if vals:
            best[lab] = max(vals)
    footnotes = []
    for col in cols:
        src = f" (stands in for {col.analog_of})" if col.analog_of and col.analog_of != col.task else ""
        used = ", ".join(ours.metrics_used.get(col.label) or []) or "not run"
        extra = f"; {'; '.join(ours.notes[col.label])}" if ours.notes.get(col.label) else ""
        data = f"; {data_notes[col.task]}" if data_notes and col.task in data_notes else ""
        footnotes.append(f"{col.label} ← {col.task}{src}: {used}{extra}{data}")
    return TableView(key=f"offline_{part}", title=title, columns=[c.label for c in cols] + ["Avg"],
                     headers=[f"{c.label}" for c in cols] + ["Avg"], rows=rows, footnotes=footnotes,
                     with_paper=False, best=best,
                     missing_columns=[(c.label, task_level[c.label]) for c in cols if task_level[c.label]])


def crossview_table(scores: pd.DataFrame, kinds: Mapping[str, str], scale: float) -> list[dict]:
    """Two-view diagnostics, one row per task and run: per view, the score on its own labels and on the other's."""
    cross = scores[scores["metric"].str.endswith("_crossview") & scores["value"].notna()]
    out = []
    for (task, model, recipe, mode), grp in cross.groupby(["task", "model", "recipe", "mode"], sort=True):
        base_metric = grp["metric"].iloc[0][: -len("_crossview")]
        own = scores[(scores["task"] == task) & (scores["model"] == model) & (scores["recipe"] == recipe)
                     & (scores["mode"] == mode) & (scores["metric"] == base_metric)]
        views = []
        for subset, sgrp in grp.groupby("subset", sort=True):
            o = own[own["subset"] == subset]["value"]
            own_v = float(o.mean()) * scale if len(o) else None
            cross_v = float(sgrp["value"].mean()) * scale
            views.append({"view": subset, "own": own_v, "cross": cross_v,
                          "gap": own_v - cross_v if own_v is not None else None})
        out.append({"task": task, "run": (model, recipe, mode), "label": run_label((model, recipe, mode), kinds),
                    "metric": base_metric, "views": views, "sort": run_sort_key((model, recipe, mode), kinds)})
    out.sort(key=lambda r: (r["task"], r["sort"]))
    return out


def long_table(scores: pd.DataFrame, scale: float) -> list[dict]:
    """Every score, seeds averaged: the appendix table."""
    sc = scores[scores["metric"] != "status"]
    out = []
    keys = ["task", "model", "recipe", "mode", "layer", "subset", "metric"]
    for key, grp in sc.groupby(keys, sort=True):
        vals = grp["value"].dropna().to_numpy(dtype=float) * scale
        if vals.size == 0:
            continue
        sd = float(vals.std(ddof=1)) if vals.size > 1 else None
        n = grp["n"].dropna()
        out.append(dict(zip(keys, key, strict=True)) | {
            "mean": float(vals.mean()), "sd": sd, "n_seeds": int((grp["seed"] != NO_SEED).sum()),
            "n": int(n.iloc[0]) if len(n) else None})
    return out


# ----------------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg): each returns a Figure record, with the reason when it cannot be drawn
# ----------------------------------------------------------------------------------------------------------

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999", "#000000"]
RECIPE_COLOURS = {"inbedder": "#0072B2", "released": "#56B4E9", "alpaca": "#E69F00", "none": "#8C8C8C"}
ENCODER_COLOURS = ["#009E73", "#CC79A7", "#D55E00", "#000000"]
MPL_STYLE = {
    "font.family": "serif", "font.serif": ["DejaVu Serif"], "font.size": 8.5, "axes.titlesize": 9,
    "axes.labelsize": 8.5, "legend.fontsize": 7.5, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.grid.axis": "y",
    "grid.alpha": 0.35, "grid.linestyle": ":", "axes.axisbelow": True, "legend.frameon": False,
    "savefig.dpi": 160, "figure.dpi": 100,
}


@dataclass
class Figure:
    """A rendered figure (PNG bytes) or the reason it could not be drawn."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    reason: str = ""

    @property
    def b64(self) -> str:
        """The PNG as base64 for a data URI."""
        return base64.b64encode(self.png).decode("ascii") if self.png else ""

    @property
    def width_px(self) -> int:
        """Display width in CSS pixels: the figure's size in inches at 100 px per inch."""
        if not self.png or self.png[:8] != b"\x89PNG\r\n\x1a\n":
            return 0
        return round(int.from_bytes(self.png[16:20], "big") * 100 / MPL_STYLE["savefig.dpi"])


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    _plt().close(fig)
    return buf.getvalue()


def run_colour(run: RunKey, kinds: Mapping[str, str], encoders: Sequence[str]) -> str:
    """Colour by recipe for language models, by model for sentence encoders."""
    model, recipe, mode = run
    if kinds.get(model) == "sentence-encoder" or mode in ("plain", "prefixed"):
        idx = list(encoders).index(model) if model in encoders else 0
        return ENCODER_COLOURS[idx % len(ENCODER_COLOURS)]
    return RECIPE_COLOURS.get(recipe, PALETTE[-1])


def headline_runs(book: SuiteScores, kinds: Mapping[str, str]) -> list[RunKey]:
    """One run per (model, recipe): its best IA mode (generic average where no IA); encoders per mode."""
    best: dict[tuple[str, str], RunKey] = {}
    for run, cells in book.runs.items():
        model, recipe, mode = run
        key = (model, recipe if mode not in ("plain", "prefixed") else recipe + mode)
        score = cells.get(IA_AVG, Cell()).value if cells.get(IA_AVG, Cell()).ok else None
        if score is None and cells.get(GEN_AVG, Cell()).ok:
            score = cells[GEN_AVG].value - 1000.0
        if score is None:
            score = -1e9
        old = best.get(key)
        if old is None:
            best[key] = run
            continue
        oc = book.runs[old]
        old_score = (oc[IA_AVG].value if oc.get(IA_AVG, Cell()).ok else
                     (oc[GEN_AVG].value - 1000.0 if oc.get(GEN_AVG, Cell()).ok else -1e9))
        if score > old_score:
            best[key] = run
    return sorted(best.values(), key=lambda r: run_sort_key(r, kinds))


def _grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, str, list, list]], width: float = 0.8,
                  hatches: Sequence[str | None] | None = None):
    """Draw grouped bars; series = (label, colour, values, sds) with None for missing values."""
    n = max(len(series), 1)
    w = width / n
    x = np.arange(len(groups))
    for i, (label, colour, vals, sds) in enumerate(series):
        xs = x - width / 2 + w * (i + 0.5)
        v = np.array([np.nan if a is None else a for a in vals], dtype=float)
        e = np.array([0.0 if (s is None or not np.isfinite(s)) else s for s in sds], dtype=float)
        hatch = hatches[i] if hatches else None
        ax.bar(xs, np.nan_to_num(v), w * 0.92, color=colour, label=label, yerr=np.where(np.isnan(v), 0, e),
               error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"}, hatch=hatch,
               edgecolor="white" if not hatch else "#333333", linewidth=0.4)
        for xi, vi in zip(xs, v, strict=True):
            if np.isnan(vi):
                ax.text(xi, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="#888888")
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.axhline(0, color="#444444", linewidth=0.6)


def figure_scores(book: SuiteScores, kinds: Mapping[str, str]) -> Figure:
    """Scores per task and model (each model and recipe at its best instruction-awareness mode)."""
    suite = book.suite
    name = f"scores_{suite.name}"
    title = f"Scores per task and model ({suite.title})"
    caption = ("Each bar is one model and recipe at its best instruction-awareness mode; error bars are the sd "
               "over clustering seeds (propagated into the averages). IA Avg = mean of the three "
               "instruction-awareness tasks; Gen Avg = mean of the generic tasks.")
    runs = headline_runs(book, kinds)
    if not runs:
        return Figure(name, title, caption, reason=f"no scores on the {suite.title} in this run")
    labels = [c.label for c in suite.ia] + ["IA Avg"] + [c.label for c in suite.generic] + ["Gen Avg"]
    keys = [c.label for c in suite.ia] + [IA_AVG] + [c.label for c in suite.generic] + [GEN_AVG]
    encoders = sorted({r[0] for r in runs if kinds.get(r[0]) == "sentence-encoder" or r[2] in ("plain", "prefixed")})
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, ax = plt.subplots(figsize=(7.6, 2.9))
        series = []
        for run in runs:
            cells = [book.get(run, k) for k in keys]
            series.append((run_label(run, kinds), run_colour(run, kinds, encoders),
                           [c.value if c.ok else None for c in cells], [c.sd for c in cells]))
        hatches = [("///" if r[1] == "released" else ("..." if r[2] == "prefixed" else None)) for r in runs]
        _grouped_bars(ax, labels, series, hatches=hatches)
        ax.axvline(len(suite.ia) + 0.5, color="#999999", linewidth=0.6, linestyle="--")
        ax.set_ylabel("score (x100)")
        ax.legend(ncol=min(3, len(series)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        return Figure(name, title, caption, _png(fig))


def figure_modes(book: SuiteScores, paper: pd.DataFrame, kinds: Mapping[str, str]) -> Figure:
    """Mode ablation: IA average per embedding mode for each language-model run, beside the authors' runs."""
    name, title = f"modes_{book.suite.name}", f"Mode ablation: answer vs prompt hidden states ({book.suite.title})"
    caption = (f"Instruction-awareness average per embedding mode. Answer modes ({', '.join(ANSWER_MODES)}) are "
               f"solid, the prompt mode ({PROMPT_MODE}) hatched. Right: the same ablation in the authors' released "
               "runs (paper_numbers.csv, table `modes`). Claim 2.")
    runs = [r for r in book.runs if r[2] not in ("plain", "prefixed") and not r[2].endswith("+filter")
            and book.get(r, IA_AVG).ok]
    pmodes = paper[paper["table"] == "modes"]
    if not runs and pmodes.empty:
        return Figure(name, title, caption, reason="no language-model run with an instruction-awareness average")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(7.6, 2.7), gridspec_kw={"width_ratios": [1, 1.15]})
        for ax, source in zip(axes, ("ours", "paper"), strict=True):
            if source == "ours":
                pairs = sorted({(m, r) for m, r, _ in runs}, key=lambda p: run_sort_key((p[0], p[1], ""), kinds))
                modes = sorted({r[2] for r in runs}, key=_mode_rank)
                vals = {(m, r, mo): book.get((m, r, mo), IA_AVG) for m, r in pairs for mo in modes}
                ax.set_title("this run")
            else:
                pairs = list(dict.fromkeys(zip(pmodes["model"], pmodes["recipe"], strict=True)))
                modes = sorted(set(pmodes["mode"]), key=_mode_rank)
                vals = {(m, r, mo): Cell() for m, r in pairs for mo in modes}
                for row in pmodes.itertuples(index=False):
                    vals[(row.model, row.recipe, row.mode)] = Cell(value=float(row.value))
                ax.set_title("authors' released runs")
            if not pairs:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="#888888")
                ax.set_axis_off()
                continue
            x = np.arange(len(pairs))
            w = 0.8 / max(len(modes), 1)
            for j, mode in enumerate(modes):
                colour = plt.get_cmap("tab10")(j % 10)
                v = [vals[(m, r, mode)].value if vals[(m, r, mode)].ok else np.nan for m, r in pairs]
                e = [vals[(m, r, mode)].sd for m, r in pairs]
                ax.bar(x - 0.4 + w * (j + 0.5), np.nan_to_num(v), w * 0.92, yerr=e, label=mode, color=colour,
                       hatch="///" if mode == PROMPT_MODE else None, edgecolor="#333333" if mode == PROMPT_MODE
                       else "white", linewidth=0.4, error_kw={"elinewidth": 0.7, "capsize": 1.2})
            labels, common = _pair_labels(pairs)
            ax.set_xticks(x)
            ax.set_xticklabels(labels, fontsize=7 if common else 6.5)
            if common:
                ax.set_title(f"{ax.get_title()} ({common})")
            ax.axhline(0, color="#444444", linewidth=0.6)
            ax.set_ylabel("IA average (x100)")
            ax.legend(ncol=min(len(modes), 6), fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.3),
                      handlelength=1.2, columnspacing=0.8)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def figure_filtering(book: SuiteScores, paper: pd.DataFrame, kinds: Mapping[str, str]) -> Figure:
    """Filtering ablation: <mode> vs <mode>+filter, ours and the paper's."""
    name, title = f"filtering_{book.suite.name}", f"Filtering ablation ({book.suite.title})"
    caption = ("Instruction-awareness average without and with filtering of uninformative generation steps "
               "(stopwords, instruction tokens, 'Based on', 'Sure!'). Right: the paper's filtering table. Claim 3.")
    pairs = []
    for run in sorted(book.runs, key=lambda r: run_sort_key(r, kinds)):
        if run[2].endswith("+filter"):
            base = (run[0], run[1], run[2][: -len("+filter")])
            if book.get(run, IA_AVG).ok and book.get(base, IA_AVG).ok:
                pairs.append((base, run))
    pf = paper[paper["table"] == "filtering"]
    if not pairs and pf.empty:
        return Figure(name, title, caption, reason="no <mode>+filter run beside its unfiltered mode")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 2.6), gridspec_kw={"width_ratios": [1, 1.5]})
        paper_pairs: list[tuple[str, Any, Any]] = []
        for (model, mode_base), _ in pf.assign(base=pf["mode"].str.replace("+filter", "", regex=False)).groupby(
                ["model", "base"], sort=False):
            get = {m: float(v) for m, v in zip(pf[pf["model"] == model]["mode"], pf[pf["model"] == model]["value"],
                                                strict=True)}
            paper_pairs.append((f"{model.replace('llama-2-', 'llama-')}\n{mode_base}", get.get(mode_base),
                                get.get(mode_base + "+filter")))
        labels, common = _pair_labels([(b[0], b[1]) for b, _ in pairs])
        ours_pairs = [(f"{lab}\n{b[2]}", book.get(b, IA_AVG), book.get(f, IA_AVG))
                      for lab, (b, f) in zip(labels, pairs, strict=True)]
        ours_title = f"this run ({common})" if common else "this run"
        for ax, items, ttl in ((axes[0], ours_pairs, ours_title), (axes[1], paper_pairs, "paper")):
            ax.set_title(ttl)
            if not items:
                ax.text(0.5, 0.5, "no filter pairs", ha="center", va="center", transform=ax.transAxes,
                        color="#888888")
                ax.set_axis_off()
                continue
            x = np.arange(len(items))
            for k, (lab, colour, hatch) in enumerate((("without filter", "#B0B0B0", None),
                                                       ("with filter", "#0072B2", None))):
                v, e = [], []
                for it in items:
                    c = it[1 + k]
                    if isinstance(c, Cell):
                        v.append(c.value if c.ok else np.nan)
                        e.append(c.sd)
                    else:
                        v.append(np.nan if c is None else c)
                        e.append(0.0)
                ax.bar(x - 0.2 + 0.4 * k, np.nan_to_num(v), 0.38, yerr=e, color=colour, label=lab, hatch=hatch,
                       error_kw={"elinewidth": 0.7, "capsize": 1.2})
            ax.set_xticks(x)
            ax.set_xticklabels([it[0] for it in items], fontsize=6.5)
            ax.set_ylabel("IA average (x100)")
            ax.axhline(0, color="#444444", linewidth=0.6)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def _pair_labels(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], str]:
    """Tick labels for (model, recipe) pairs: the recipe alone when every pair has the same model."""
    names = {"inbedder": "InBedder", "released": "InBedder[released]", "alpaca": "alpaca", "none": "untuned"}
    models = {m for m, _ in pairs}
    if len(models) == 1:
        return [names.get(r, r) for _, r in pairs], next(iter(models))
    return [f"{m}\n{names.get(r, r)}" for m, r in pairs], ""


def figure_loss(training: Sequence[dict]) -> Figure:
    """Training loss curves of every fine-tuned model (raw and smoothed)."""
    name, title = "training_loss", "Training loss"
    caption = ("Loss per optimisation step (light: raw; dark: exponential moving average, alpha 0.2). Legend: "
               "held-out answer token F1 before -> after training.")
    logs = [t for t in training if t.get("log") is not None and len(t["log"])]
    if not logs:
        return Figure(name, title, caption, reason="no train_log.csv in this run (no model was fine-tuned)")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 2.6))
        for i, t in enumerate(logs):
            log = t["log"]
            colour = RECIPE_COLOURS.get(t["recipe"], PALETTE[i % len(PALETTE)])
            ax.plot(log["step"], log["loss"], color=colour, alpha=0.25, linewidth=0.8)
            smooth = log["loss"].ewm(alpha=0.2).mean()
            f1 = ""
            s = t.get("summary") or {}
            if _num(s.get("heldout_token_f1_before")) is not None and _num(s.get("heldout_token_f1_after")) is not None:
                f1 = f"  (F1 {_f1(s['heldout_token_f1_before'])} -> {_f1(s['heldout_token_f1_after'])})"
            ax.plot(log["step"], smooth, color=colour, linewidth=1.4, label=f"{t['name']}{f1}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        return Figure(name, title, caption, _png(fig))


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _f1(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "n/a"
    return f"{v * 100:.1f}" if v <= 1.0 else f"{v:.1f}"


def clustering_tasks(scores: pd.DataFrame) -> list[str]:
    """Tasks scored by V-measure (not the cross-view diagnostics, not robustness groups)."""
    v = scores[(scores["metric"] == "v_measure") & scores["value"].notna()]
    v = v[~v["subset"].map(_robustness_group).notna()]
    return sorted(set(v["task"]))


def figure_clustering(scores: pd.DataFrame, runs: Sequence[RunKey], kinds: Mapping[str, str], scale: float) -> Figure:
    """V-measure per clustering task and subset: mean over seeds, sd as error bars, seeds as dots."""
    name, title = "clustering_seeds", "Clustering scores over seeds"
    caption = ("V-measure (x100) per clustering task and subset (view), for each model and recipe at its headline "
               "mode: bar = mean over seeds, error bar = sd, dots = individual seeds.")
    tasks = clustering_tasks(scores)
    if not tasks:
        return Figure(name, title, caption, reason="no clustering scores in this run")
    sel = set(runs)
    plt = _plt()
    encoders = sorted({r[0] for r in runs if kinds.get(r[0]) == "sentence-encoder" or r[2] in ("plain", "prefixed")})
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(max(3.0, 2.6 * len(tasks)), 2.7), squeeze=False)
        handles = {}
        for ax, task in zip(axes[0], tasks, strict=True):
            d = scores[(scores["task"] == task) & (scores["metric"] == "v_measure") & scores["value"].notna()]
            d = d[[(m, r, mo) in sel for m, r, mo in zip(d["model"], d["recipe"], d["mode"], strict=True)]]
            subsets = sorted(set(d["subset"]), key=lambda s: (s == "hmean", s))
            task_runs = sorted({(m, r, mo) for m, r, mo in zip(d["model"], d["recipe"], d["mode"], strict=True)},
                               key=lambda r: run_sort_key(r, kinds))
            if not task_runs:
                ax.set_title(task)
                ax.text(0.5, 0.5, "no headline runs", ha="center", va="center", transform=ax.transAxes)
                continue
            x = np.arange(len(subsets))
            w = 0.8 / len(task_runs)
            for i, run in enumerate(task_runs):
                colour = run_colour(run, kinds, encoders)
                rd = d[(d["model"] == run[0]) & (d["recipe"] == run[1]) & (d["mode"] == run[2])]
                for j, sub in enumerate(subsets):
                    vals = rd[rd["subset"] == sub].groupby("seed")["value"].mean().to_numpy() * scale
                    if vals.size == 0:
                        continue
                    xi = x[j] - 0.4 + w * (i + 0.5)
                    sd = vals.std(ddof=1) if vals.size > 1 else 0.0
                    h = ax.bar(xi, vals.mean(), w * 0.9, yerr=sd, color=colour, alpha=0.85,
                               error_kw={"elinewidth": 0.7, "capsize": 1.2})
                    ax.scatter(np.full(vals.size, xi), vals, s=4, color="#222222", zorder=3, linewidths=0)
                    handles[run_label(run, kinds)] = h
            ax.set_xticks(x)
            ax.set_xticklabels(subsets)
            ax.set_title(task, fontsize=8)
            ax.set_ylabel("V-measure (x100)")
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(3, len(handles)),
                   bbox_to_anchor=(0.5, -0.08 - 0.04 * (len(handles) // 3)))
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def _robustness_group(subset: str) -> str | None:
    s = subset.lower()
    for g in ("incorrect", "implicit", "correct"):  # "incorrect" before "correct"
        if s == g or s.startswith(tuple(g + sep for sep in ":_-/")):
            return g
    return None


def robustness_rows(scores: pd.DataFrame, kinds: Mapping[str, str], scale: float) -> list[dict]:
    """Per robustness task and run: mean (sd) V-measure per instruction group, and dci / dii.

    Groups come from the per-instruction rows (metric `v_measure`, subset `correct/03`, ...) when present,
    else from the per-group means (metric `v_measure_mean`, subset `correct`, ...).
    """
    groups = scores["subset"].map(_robustness_group)
    d = scores[groups.notna() & scores["value"].notna() & ~scores["metric"].isin(("dci", "dii"))].copy()
    d["group"] = groups[groups.notna()]
    is_mean = d["metric"].str.startswith("mean_") | d["metric"].str.endswith("_mean")
    summary = d[is_mean]  # per-group means (v_measure_mean with subset = group)
    d = d[~is_mean]
    deltas = scores[scores["metric"].isin(("dci", "dii")) & scores["value"].notna()]
    key_cols = ["task", "model", "recipe", "mode"]
    keys = set()
    for frame in (d, summary, deltas):
        keys |= set(zip(*(frame[c] for c in key_cols), strict=True))
    out = []
    for task, model, recipe, mode in sorted(keys, key=lambda k: (k[0], run_sort_key(k[1:], kinds))):
        def sel(frame: pd.DataFrame, task=task, model=model, recipe=recipe, mode=mode) -> pd.DataFrame:
            return frame[(frame["task"] == task) & (frame["model"] == model) & (frame["recipe"] == recipe)
                         & (frame["mode"] == mode)]

        rd, rs, dd = sel(d), sel(summary), sel(deltas)
        row = {"task": task, "run": (model, recipe, mode), "label": run_label((model, recipe, mode), kinds),
               "groups": {}}
        for g in ROBUSTNESS_GROUPS:
            vals = rd[rd["group"] == g]["value"].to_numpy(dtype=float) * scale
            if vals.size == 0:
                vals = rs[rs["group"] == g]["value"].to_numpy(dtype=float) * scale
            if vals.size:
                row["groups"][g] = (float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                                    int(vals.size))
        for metric in ("dci", "dii"):
            v = dd[dd["metric"] == metric]["value"]
            row[metric] = float(v.mean()) * scale if len(v) else None
        out.append(row)
    return out


def figure_robustness(rows: Sequence[dict], kinds: Mapping[str, str]) -> Figure:
    """Mean V-measure for correct / implicit / incorrect instructions per robustness task and run."""
    name, title = "robustness", "Robustness to the wording of the instruction"
    caption = ("Mean V-measure (x100) over the correct, implicit and incorrect instructions of each robustness task; "
               "error bars = sd over instructions (and seeds). A robust, instruction-following embedder scores high "
               "on correct and implicit instructions and low on incorrect ones.")
    rows = [r for r in rows if r["groups"]]
    if not rows:
        return Figure(name, title, caption, reason="no robustness scores in this run")
    tasks = sorted({r["task"] for r in rows})
    plt = _plt()
    encoders = sorted({r["run"][0] for r in rows if kinds.get(r["run"][0]) == "sentence-encoder"})
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(max(3.2, 3.0 * len(tasks)), 2.6), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            trows = [r for r in rows if r["task"] == task]
            series = [(r["label"], run_colour(r["run"], kinds, encoders),
                       [r["groups"].get(g, (None,))[0] for g in ROBUSTNESS_GROUPS],
                       [r["groups"].get(g, (None, 0.0))[1] for g in ROBUSTNESS_GROUPS]) for r in trows]
            _grouped_bars(ax, list(ROBUSTNESS_GROUPS), series)
            ax.set_title(task, fontsize=8)
            ax.set_ylabel("V-measure (x100)")
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def figure_projection(views: Mapping[str, Mapping[str, tuple[np.ndarray, list[str]]]],
                      labels: Mapping[str, Mapping[str, str]], title_suffix: str = "") -> Figure:
    """PCA of one two-view task's embeddings: one panel per (run, instruction, colouring view).

    views: run label -> instruction view -> (embeddings [N, H], texts); labels: view -> text -> label.
    """
    name, title = "projection", "2-D projection of a two-view task under each instruction" + title_suffix
    caption = ("PCA (2 components, fitted per panel on L2-normalised embeddings) of the same utterances embedded "
               "under each instruction; the colours are each view's gold labels. An instruction-following embedder "
               "separates the colours of the view its instruction asks about (the panels framed in blue).")
    if not views:
        return Figure(name, title, caption, reason="no cached embeddings for the projection")
    from sklearn.decomposition import PCA

    colour_views = sorted(labels)
    instr_views = sorted({v for per in views.values() for v in per})
    plt = _plt()
    ncols = len(instr_views) * len(colour_views)
    with plt.rc_context(MPL_STYLE | {"axes.grid": False}):
        fig, axes = plt.subplots(len(views), ncols, figsize=(1.95 * ncols, 1.95 * len(views) + 0.5),
                                 squeeze=False)
        for i, (run, per) in enumerate(views.items()):
            for j, iv in enumerate(instr_views):
                if iv not in per:
                    continue
                X, texts = per[iv]
                X = np.asarray(X, dtype=float)
                X = X / np.clip(np.linalg.norm(X, axis=1, keepdims=True), 1e-12, None)
                xy = PCA(n_components=2, random_state=0).fit_transform(X) if len(X) > 2 else np.zeros((len(X), 2))
                for k, cv in enumerate(colour_views):
                    ax = axes[i][j * len(colour_views) + k]
                    lab = [labels[cv].get(t) for t in texts]
                    cats = sorted({x for x in lab if x is not None})
                    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
                    idx = {c: n for n, c in enumerate(cats)}
                    colours = [cmap(idx[x] % cmap.N) if x is not None else (0.8, 0.8, 0.8, 1) for x in lab]
                    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=3, linewidths=0)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for spine in ax.spines.values():  # the panels where instruction and colouring agree stand out
                        spine.set_visible(True)
                        spine.set_color("#0b4f8a" if iv == cv else "#999999")
                        spine.set_linewidth(1.6 if iv == cv else 0.6)
                    ax.set_title(f"instruction: {iv}\ncolour: {cv} labels", fontsize=6.5)
                    if j == 0 and k == 0:
                        ax.set_ylabel(run, fontsize=7)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


# ----------------------------------------------------------------------------------------------------------
# Other inputs: training, explanations, benchmarks, data manifests, model fingerprints, the projection cache
# ----------------------------------------------------------------------------------------------------------


def load_training(models_dir: str | os.PathLike) -> list[dict]:
    """Every fine-tuned model folder with a train_summary.json: its summary and train_log.csv (when present)."""
    root = Path(models_dir)
    out = []
    if not root.is_dir():
        return out
    for summary_path in sorted(root.glob("*/train_summary.json")):
        folder = summary_path.parent
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        log = None
        log_path = folder / "train_log.csv"
        if log_path.is_file():
            log = pd.read_csv(log_path)
            for col in ("step", "loss"):
                if col not in log.columns:
                    raise ValueError(f"{log_path}: missing column {col!r}; expected step, loss, lr")
        model = str(summary.get("model") or folder.name)
        recipe = str(summary.get("recipe") or "")
        out.append({"name": folder.name, "model": model, "recipe": recipe, "summary": summary, "log": log,
                    "path": str(folder)})
    return out


def training_rows(training: Sequence[dict]) -> list[dict]:
    """The training table: steps, speed, loss before/after, held-out answer F1 before/after."""
    rows = []
    for t in training:
        s = t["summary"]
        rows.append({
            "name": t["name"], "steps": s.get("steps"), "seconds_per_step": _num(s.get("seconds_per_step")),
            "first_loss": _num(s.get("first_loss")), "last_loss": _num(s.get("last_loss")),
            "f1_before": _num(s.get("heldout_token_f1_before")), "f1_after": _num(s.get("heldout_token_f1_after")),
            "train_rows": s.get("train_rows"), "device": s.get("device"), "dtype": s.get("dtype"),
            "effective_batch": s.get("effective_batch"),
        })
    return rows


def _cluster_lists(obj: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], list[dict]]]:
    """Every list of cluster records ({cluster, top_words, ...}) inside a JSON value, with its key path."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and "cluster" in x for x in obj):
        yield path, obj
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _cluster_lists(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _cluster_lists(v, path + (str(i),))


def _words(entry: Mapping[str, Any], limit: int = 8) -> list[str]:
    words = entry.get("top_words", entry.get("words", []))
    out = []
    for w in words[:limit]:
        out.append(str(w[0]) if isinstance(w, (list, tuple)) else str(w.get("word")) if isinstance(w, dict) else str(w))
    return out


def _explanation_rows(clusters: Sequence[Mapping[str, Any]]) -> list[dict]:
    rows = []
    for c in sorted(clusters, key=lambda c: (-int(c.get("size", 0) or 0), str(c.get("cluster")))):
        labels = c.get("labels") or {}
        top = sorted(labels.items(), key=lambda kv: -kv[1])[:2] if isinstance(labels, dict) else []
        size = int(c.get("size", 0) or 0)
        purity = (top[0][1] / size) if top and size else None
        rows.append({"cluster": c.get("cluster"), "size": size, "words": _words(c),
                     "labels": [f"{k} ({v})" for k, v in top], "purity": purity})
    return rows


def load_explanations(scores_dir: str | os.PathLike, headline: Sequence[RunKey]) -> list[dict]:
    """Cluster explanations of each (model, recipe, task): the headline mode, last layer, first seed.

    Reads `scores/<model>-<recipe>/<task>/explanations.json` (evaluate's layout: an `explanations` list of
    {mode, layer, subset, instruction, seed, clusters}) or `scores/<model>-<recipe>/<task>.explanations.json`.
    """
    root = Path(scores_dir)
    if not root.is_dir():
        return []
    wanted_modes = {(m, r): mode for m, r, mode in headline}
    paths = [(p, p.parent.name, p.name[: -len(".explanations.json")]) for p in root.glob("*/*.explanations.json")]
    paths += [(p, p.parent.parent.name, p.parent.name) for p in root.glob("*/*/explanations.json")]
    out = []
    for path, run_name, task in sorted(paths, key=lambda x: (x[2], x[1])):
        data = json.loads(path.read_text(encoding="utf-8"))
        model, recipe = (data.get("model"), data.get("recipe")) if isinstance(data, dict) else (None, None)
        if model is None:
            model, recipe = next(((m, r) for (m, r) in wanted_modes if f"{m}-{r}" == run_name), (run_name, ""))
        task = data.get("task", task) if isinstance(data, dict) else task
        mode = wanted_modes.get((model, recipe))
        groups = []
        entries = data.get("explanations") if isinstance(data, dict) else None
        if isinstance(entries, list) and all(isinstance(e, dict) and "clusters" in e for e in entries):
            if entries:
                modes = list(dict.fromkeys(str(e.get("mode")) for e in entries))
                chosen = mode if mode in modes else modes[0]
                sel = [e for e in entries if str(e.get("mode")) == chosen]
                layer_of = {str(e.get("layer")): _as_int(str(e.get("layer"))) for e in sel}
                last = "-1" if "-1" in layer_of else max(layer_of, key=lambda k: layer_of[k] or 0)
                sel = [e for e in sel if str(e.get("layer")) == last]
                seeds = sorted({e.get("seed") for e in sel}, key=lambda x: (x is None, x if x is not None else 0))
                sel = [e for e in sel if e.get("seed") == seeds[0]]
                for e in sel:
                    seed = "" if e.get("seed") is None else f", seed {e['seed']}"
                    groups.append({"context": f"{chosen}, view {e.get('subset')}{seed}",
                                   "instruction": e.get("instruction", ""), "rows": _explanation_rows(e["clusters"])})
                mode = chosen
        else:
            for key_path, clusters in _cluster_lists(data):
                groups.append({"context": " / ".join(key_path) or "clusters", "instruction": "",
                               "rows": _explanation_rows(clusters)})
            if mode:  # the headline mode's clusters first
                groups.sort(key=lambda g: mode not in g["context"].split(" / "))
        if groups:
            out.append({"task": task, "run": f"{model}-{recipe}" if recipe else run_name, "groups": groups,
                        "path": str(path), "headline_mode": mode, "recipe": recipe})
    return out


def load_benchmarks(dirs: Sequence[str | os.PathLike]) -> list[dict]:
    """Snakemake benchmark files (s, h:m:s, max_rss, ...) under <dir>/<stage>/..., one row per job."""
    rows = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.tsv")):
            try:
                bench = pd.read_csv(path, sep="\t")
            except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
                raise ValueError(f"{path}: not a Snakemake benchmark file ({err})") from err
            if "s" not in bench.columns or bench.empty:
                raise ValueError(f"{path}: no 's' column (expected Snakemake's benchmark columns s, h:m:s, max_rss)")
            rel = path.relative_to(root).with_suffix("")
            rows.append({
                "stage": rel.parts[0] if len(rel.parts) > 1 else "-",
                "job": "/".join(rel.parts[1:]) if len(rel.parts) > 1 else rel.parts[0],
                "where": str(root),
                "s": float(bench["s"].mean()),
                "max_rss": _num(bench["max_rss"].max()) if "max_rss" in bench.columns else None,
                "repeats": len(bench),
            })
    return rows


def benchmark_summary(rows: Sequence[dict]) -> list[dict]:
    """Wall time per stage: jobs, total and longest job, peak RSS."""
    stages: dict[str, dict] = {}
    for r in rows:
        s = stages.setdefault(r["stage"], {"stage": r["stage"], "jobs": 0, "total_s": 0.0, "max_s": 0.0,
                                             "max_job": "", "max_rss": None})
        s["jobs"] += 1
        s["total_s"] += r["s"]
        if r["s"] >= s["max_s"]:
            s["max_s"], s["max_job"] = r["s"], r["job"]
        if r["max_rss"] is not None:
            s["max_rss"] = max(s["max_rss"] or 0.0, r["max_rss"])
    return sorted(stages.values(), key=lambda s: -s["total_s"])


def load_manifests(raw_dir: str | os.PathLike) -> list[dict]:
    """Data sources of this run: data/raw/<source>/manifest.json (origin, licence, files with sha256)."""
    root = Path(raw_dir)
    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/manifest.json")):
        m = json.loads(path.read_text(encoding="utf-8"))
        decl = m.get("declaration") or {}
        files = m.get("files") or []
        if isinstance(files, dict):
            files = [{"name": k, "sha256": v if isinstance(v, str) else (v or {}).get("sha256")}
                     for k, v in files.items()]
        hub = decl.get("hub") or {}
        where = (f"{decl.get('repository')} @ {decl.get('commit')}" if decl.get("repository") else
                 f"hub {hub.get('id')} @ {hub.get('revision')}" if hub else "")
        out.append({"name": m.get("source", path.parent.name), "origin": m.get("origin", ""),
                    "licence": m.get("licence", ""), "where": where,
                    "files": [{"name": f.get("name", ""), "sha256": f.get("sha256") or "",
                               "bytes": f.get("bytes")} for f in files if isinstance(f, dict)]})
    return out


def load_model_fingerprints(models_dir: str | os.PathLike) -> list[dict]:
    """Materialised models (data/models/<model>/fingerprint.json): name, kind, source, weights sha256."""
    root = Path(models_dir)
    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.glob("*/fingerprint.json")):
        fp = json.loads(path.read_text(encoding="utf-8"))
        src = fp.get("source")
        out.append({"name": path.parent.name, "kind": fp.get("kind", ""), "sha256": fp.get("sha256", ""),
                    "source": json.dumps(src, sort_keys=True) if isinstance(src, (dict, list)) else str(src or "")})
    return out


def load_projection(cache_root: str | os.PathLike, prepared: str | os.PathLike, runs: Sequence[RunKey],
                    layers: Mapping[RunKey, str], kinds: Mapping[str, str],
                    task: str = "NLUPPTwoViewClustering") -> tuple[dict, dict, str]:
    """Embeddings of a two-view clustering task under each view's instruction, from the encode cache.

    Returns (views, labels, reason): views = run label -> view -> (X, texts); labels = view -> text -> label;
    reason is non-empty when nothing could be loaded.
    """
    prepared = Path(prepared)
    if not prepared.is_file():
        return {}, {}, f"prepared table {prepared} not found"
    table = pd.read_parquet(prepared)
    for col in ("subset", "instruction", "text", "label"):
        if col not in table.columns:
            raise ValueError(f"{prepared}: missing column {col!r} (clustering schema: subset, instruction, text, label)")
    labels = {v: dict(zip(g["text"], g["label"].astype(str), strict=True)) for v, g in table.groupby("subset")}
    instruction = {v: str(g["instruction"].iloc[0]) for v, g in table.groupby("subset")}
    try:
        from inbedder import pooling
    except ImportError as err:
        return {}, labels, f"inbedder.pooling is not available ({err})"
    views: dict[str, dict] = {}
    problems = []
    for run in runs:
        cache = Path(cache_root) / f"{run[0]}-{run[1]}" / task
        if not cache.is_dir():
            problems.append(f"no cache {cache}")
            continue
        layer_text = layers.get(run, "-1")
        layer = _as_int(layer_text)
        try:
            vectors = pooling.lookup(cache, run[2], layer if layer is not None else -1)
        except Exception as err:  # noqa: BLE001 - an optional figure: an unreadable cache is reported, not fatal
            problems.append(f"{cache} ({run[2]}): {type(err).__name__}: {err}")
            continue
        per_view = {}
        for view, texts in labels.items():
            keep = [t for t in texts if (t, instruction[view]) in vectors]
            if keep:
                per_view[view] = (np.stack([np.asarray(vectors[(t, instruction[view])]) for t in keep]), keep)
        if per_view:
            views[run_label(run, kinds)] = per_view
    return views, labels, "" if views else ("; ".join(problems) or "no embeddings found")


# ----------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------

VERSION_PACKAGES = ("inbedder-repro", "snakemake", "torch", "transformers", "sentence-transformers", "mteb",
                    "datasets", "scikit-learn", "numpy", "pandas", "safetensors", "matplotlib", "jinja2")


def package_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers ("not installed" where absent)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(repo_root: str | os.PathLike) -> dict[str, str]:
    """Commit, branch and whether the working tree has uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo_root), *args], capture_output=True, text=True, timeout=20,
                                 check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit or "no commit (not a git checkout, or nothing committed yet)",
        "short": commit[:10] if commit else "uncommitted",
        "branch": git("rev-parse", "--abbrev-ref", "HEAD") or "",
        "dirty": "yes" if status else ("no" if status is not None else "unknown"),
    }


def hardware() -> dict[str, str]:
    """The machine that rendered the report: CPU, cores, memory, GPUs (nvidia-smi where present)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    gpu = "none found"
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        if res.returncode == 0 and res.stdout.strip():
            gpu = "; ".join(x.strip() for x in res.stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "cpu": cpu, "cores": f"{affinity} usable of {os.cpu_count()}",
            "memory": mem, "gpu": gpu}


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------

ANALOG_MAPPING = (
    ("I.STSB", "InstructSTSB", "NLUPPInstructedPairs",
     ("pairs of NLU++ banking utterances sharing one label (action or object) but not the other: similar under "
      "the instruction that asks about the shared label, dissimilar under the other; Spearman of cosine vs score")),
    ("IntEmo", "IntentEmotion", "NLUPPTwoViewTriplets",
     ("anchor and positive share the instructed label and differ in the other, the negative shares the other "
      "label; success rate per view (action, object) and their harmonic mean")),
    ("NYT", "NYTClustering", "NLUPPTwoViewClustering",
     ("the NLU++ utterances with exactly one action and one object label, clustered under each view's "
      "instruction; V-measure per view and their harmonic mean")),
    ("20News", "TwentyNewsgroupsClustering", "TwentyNewsgroupsClustering",
     "the same task on the mirrored 20 Newsgroups 'bydate' archive (subject lines, as MTEB builds it)"),
    ("STS-B", "—", "STSBenchmark", "generic semantic similarity (no paper column; reported as an extra)"),
    ("B77", "—", "Banking77Clustering", "generic intent clustering (no paper column; reported as an extra)"),
)


def _fmt(v: Any, nd: int = 2) -> str:
    x = _num(v)
    return "—" if x is None else f"{x:.{nd}f}".replace("-", "\u2212")


def _signed(v: Any, nd: int = 2) -> str:
    x = _num(v)
    if x is None:
        return "—"
    return ("+" if x >= 0 else "\u2212") + f"{abs(x):.{nd}f}"


def _diff_style(v: Any, scale: float = 15.0) -> str:
    """Background tint of a difference: green above the reference, red below, stronger with size."""
    x = _num(v)
    if x is None:
        return ""
    a = 0.12 + 0.5 * min(abs(x) / scale, 1.0)
    rgb = "27,127,59" if x >= 0 else "190,40,40"
    return f"background-color: rgba({rgb},{a:.2f});"


def _hms(seconds: Any) -> str:
    x = _num(seconds)
    if x is None:
        return "—"
    m, s = divmod(round(x), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _jinja_env(template_dir: Path):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=_fmt, signed=_signed, diffstyle=_diff_style, hms=_hms)
    return env


def _unavailable_reasons(config: Mapping[str, Any], tasks: Iterable[str]) -> dict[str, str]:
    """Why each task (selected or not) cannot run under this config (hub-only data offline, ...)."""
    try:
        from inbedder.config import unavailable_reason
    except ImportError:
        return {}
    out = {}
    for task in tasks:
        if task in (config.get("tasks") or {}):
            reason = unavailable_reason(task, dict(config))
            if reason:
                out[task] = reason
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    from inbedder.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def conclusion(results: Sequence[ClaimResult]) -> list[dict]:
    """Per tested scope: the verdict and the comparisons that decided it, in one line."""
    out = []
    for res in results:
        if res.verdict == "not tested":
            continue
        shown = [e for e in res.evidence if e.holds is not None]
        failed = [e for e in shown if e.holds is False]
        ev = "; ".join(f"{'generic avg: ' if e.detail.startswith('generic') else ''}{e.label} {_fmt(e.value)} vs "
                       f"{e.reference_label} {_fmt(e.reference)} ({_signed(e.diff)})" for e in (failed or shown)[:2])
        out.append({"scope": res.scope, "verdict": res.verdict, "text": ev})
    return out


def render_report(
    scores_path: str | os.PathLike,
    out_html: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    skipped_path: str | os.PathLike | None = None,
    results_dir: str | os.PathLike | None = None,
    figures_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike = "data",
    repo_root: str | os.PathLike = ".",
    template_dir: str | os.PathLike | None = None,
    paper_path: str | os.PathLike | None = None,
    configfiles: Sequence[str] = (),
    margin: float = GENERIC_MARGIN,
) -> dict[str, Any]:
    """Render results/<run>/report/index.html (self-contained) and its figures; return the verdicts."""
    started = datetime.now(timezone.utc)
    scores_path, out_html = Path(scores_path), Path(out_html)
    results_dir = Path(results_dir) if results_dir is not None else scores_path.parent
    repo_root, data_dir = Path(repo_root), Path(data_dir)
    template_dir = Path(template_dir) if template_dir is not None else DEFAULT_TEMPLATE_DIR
    notes: list[str] = []  # warnings: a missing input
    infos: list[str] = []  # remarks on what is shown
    if scores_path.is_file():
        raw = load_scores(scores_path)
    else:
        raw = pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "n") else str) for c in SCORE_COLUMNS})
        raw["seed"] = raw["seed"].astype(int)
        notes.append(f"{scores_path} does not exist: no scores in this report.")
    skipped = load_skipped(skipped_path, raw)
    scale = value_scale(raw)
    scores = headline_layer(raw[raw["metric"] != "status"])
    layers = {(m, r, mo): lay for m, r, mo, lay in
              zip(scores["model"], scores["recipe"], scores["mode"], scores["layer"], strict=True)}
    other_layers = sorted(set(raw["layer"]) - set(scores["layer"]))
    if other_layers:
        infos.append(f"scores.csv also holds layer(s) {', '.join(other_layers)}; the tables show the last layer "
                     "(all layers are in Appendix A).")
    models_cfg = config.get("models") or {}
    kinds = {m: str(spec.get("kind", "")) for m, spec in models_cfg.items()}
    select = config.get("select") or {}
    all_tasks = {t for s in SUITES for t in s.tasks}
    unavailable = _unavailable_reasons(config, all_tasks)
    reasons = MissingReasons(scores, skipped, select.get("tasks"), select.get("models"))
    reasons.skipped = {**{t: r for t, r in unavailable.items()}, **skipped}
    paper = load_paper_numbers(paper_path)
    books = {s.name: suite_scores(scores, s, scale) for s in SUITES}
    published = paper_suite_scores(paper)
    data_notes = {}
    tw = (config.get("tasks") or {}).get("TwentyNewsgroupsClustering") or {}
    if tw.get("dataset"):
        data_notes["TwentyNewsgroupsClustering"] = (f"our data: the offline mirror (dataset {tw['dataset']}), "
                                                    "not mteb's hub copy")

    scopes = (("paper", "paper tasks", books["paper"]), ("offline", "offline analogs", books["offline"]),
              ("published", "the paper's own numbers (rule check)", published))
    claim_results = {name: evaluate_claims(book, kinds, title, margin) for name, title, book in scopes}
    claims = []
    for n in range(1, 5):
        results = [claim_results[name][n - 1] for name, _, _ in scopes]
        claims.append({"number": n, "title": CLAIMS[n][0], "statement": CLAIMS[n][1], "rule": results[0].rule,
                       "results": results, "conclusion": conclusion(results[:2])})

    tables = {
        "paper_ia": paper_table(paper, "instruction_awareness", books["paper"], reasons, kinds, data_notes),
        "paper_generic": paper_table(paper, "generic", books["paper"], reasons, kinds, data_notes),
        "offline_ia": offline_table(books["offline"], "ia", reasons, kinds, data_notes),
        "offline_generic": offline_table(books["offline"], "generic", reasons, kinds, data_notes),
    }

    training = load_training(results_dir / "models")
    headline = {name: headline_runs(books[name], kinds) for name in ("paper", "offline")}
    all_headline = list(dict.fromkeys(headline["offline"] + headline["paper"]))
    robust = robustness_rows(scores, kinds, scale)
    figures: list[Figure] = []
    paper_only = [c.label for c in PAPER_SUITE.ia + PAPER_SUITE.generic if c.task not in OFFLINE_SUITE.tasks]
    if any(books["paper"].get(r, lab).ok for r in books["paper"].runs for lab in paper_only):
        figures.append(figure_scores(books["paper"], kinds))
    figures.append(figure_scores(books["offline"], kinds))
    mode_book = books["offline"] if books["offline"].runs or not books["paper"].runs else books["paper"]
    figures.append(figure_modes(mode_book, paper, kinds))
    figures.append(figure_filtering(mode_book, paper, kinds))
    figures.append(figure_loss(training))
    figures.append(figure_clustering(scores, all_headline, kinds, scale))
    figures.append(figure_robustness(robust, kinds))
    proj_runs = _projection_runs(books["offline"], kinds)
    views, labels, why = load_projection(
        results_dir / "cache", data_dir / "prepared" / _clustering_dataset(config, "NLUPPTwoViewClustering"),
        proj_runs, layers, kinds)
    proj = figure_projection(views, labels, " (NLUPPTwoViewClustering)")
    if not proj.png:
        proj.reason = why or proj.reason
    figures.append(proj)
    for i, fig in enumerate(figures, 1):
        fig.title = f"Figure {i}. {fig.title}"

    benches = load_benchmarks([results_dir / "benchmarks", data_dir / "benchmarks"])
    import yaml

    provenance = {
        "git": git_state(repo_root),
        "run": config.get("run", results_dir.name),
        "configfiles": list(dict.fromkeys(_display_path(p, repo_root) for p in configfiles)),
        "offline": config.get("offline"),
        "data_mirror": config.get("data_mirror"),
        "versions": package_versions(),
        "hardware": hardware(),
        "train_devices": sorted({f"{t['name']}: {t['summary'].get('device')} / {t['summary'].get('dtype')}"
                                 for t in training if t["summary"].get("device")}),
        "manifests": load_manifests(data_dir / "raw"),
        "fingerprints": load_model_fingerprints(data_dir / "models"),
        "paper_numbers_sha256": _paper_numbers_sha(paper_path),
        "scores_sha256": sha256_file(scores_path) if scores_path.is_file() else "",
        "bench_rows": sorted(benches, key=lambda r: (r["stage"], r["job"])),
        "bench_stages": benchmark_summary(benches),
        "bench_total": sum(r["s"] for r in benches),
        "config_yaml": yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True, width=110),
    }
    ctx = {
        "run": provenance["run"], "generated": started.strftime("%Y-%m-%d %H:%M UTC"),
        "claims": claims, "tables": tables, "mapping": ANALOG_MAPPING, "figures": figures,
        "crossview": _crossview_groups(crossview_table(scores, kinds, scale), all_headline),
        "training": training_rows(training),
        "robustness": [r for r in robust if r["groups"] or r.get("dci") is not None],
        "explanations": load_explanations(results_dir / "scores", all_headline),
        "skipped": dict(sorted({**skipped}.items())), "unavailable": unavailable, "scale": scale,
        "provenance": provenance, "long": long_table(raw, scale), "margin": margin, "notes": notes,
        "infos": infos,
        "n_scores": len(raw), "css": (template_dir / "style.css").read_text(encoding="utf-8"),
        "answer_modes": ANSWER_MODES, "prompt_mode": PROMPT_MODE,
    }
    html = _jinja_env(template_dir).get_template("index.html.j2").render(**ctx)
    write_text(out_html, html)
    if figures_dir is not None:
        fdir = Path(figures_dir)
        fdir.mkdir(parents=True, exist_ok=True)
        for fig in figures:
            if fig.png:
                _write_bytes(fdir / f"{fig.name}.png", fig.png)
    return {
        "html": str(out_html),
        "verdicts": {f"Claim {c['number']}": {r.scope: r.verdict for r in c["results"]} for c in claims},
        "figures": {f.name: bool(f.png) for f in figures},
        "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
    }


def _crossview_groups(rows: Sequence[dict], headline: Sequence[RunKey]) -> list[dict]:
    """Cross-view rows per task: headline runs shown, the other modes folded away."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        trows = [r for r in rows if r["task"] == task]
        views = sorted({v["view"] for r in trows for v in r["views"]})
        for r in trows:
            by_view = {v["view"]: v for v in r["views"]}
            r["cells"] = [by_view.get(v) for v in views]
        out.append({"task": task, "views": views, "metric": trows[0]["metric"],
                    "main": [r for r in trows if r["run"] in headline],
                    "more": [r for r in trows if r["run"] not in headline]})
    return out


def _projection_runs(book: SuiteScores, kinds: Mapping[str, str]) -> list[RunKey]:
    """Runs for the projection: the best InBedder run, the untuned model in the same mode, one plain encoder."""
    inb = [r for r in book.runs if r[1] in INBEDDER_RECIPES and book.get(r, IA_AVG).ok]
    out: list[RunKey] = []
    if inb:
        best = max(inb, key=lambda r: book.get(r, IA_AVG).value)
        out.append(best)
        if (best[0], "none", best[2]) in book.runs:
            out.append((best[0], "none", best[2]))
    plain = sorted(r for r in book.runs if r[2] == NO_INSTRUCTION_MODE)
    if plain:
        out.append(plain[0])
    if not out:
        out = headline_runs(book, kinds)[:2]
    return out


def _clustering_dataset(config: Mapping[str, Any], task: str) -> str:
    spec = (config.get("tasks") or {}).get(task) or {}
    return f"{spec.get('dataset', 'nlupp_clustering')}.parquet"


def _paper_numbers_sha(path: str | os.PathLike | None) -> str:
    if path is not None:
        return sha256_file(path)
    ref = importlib.resources.files("inbedder").joinpath("paper_numbers.csv")
    with importlib.resources.as_file(ref) as p:
        return sha256_file(p)


def _display_path(path: str | os.PathLike, root: Path) -> str:
    """A path relative to the repository (or the working folder) when it lies inside it."""
    p = Path(path).resolve()
    for base in (root.resolve(), Path.cwd()):
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return str(path)


def _plain(obj: Any) -> Any:
    """A config as plain dicts/lists (Snakemake's config is a dict subclass; YAML dumps plain data only)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m inbedder.report RESULTS_DIR CONFIG...`: re-render a finished run's report."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results_dir", help="results/<run> folder holding scores.csv")
    parser.add_argument("configs", nargs="+", help="config files, layered in order (config.yaml, profile run.yaml)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--out", default=None, help="output HTML (default RESULTS_DIR/report/index.html)")
    args = parser.parse_args(argv)
    from inbedder.config import load_config

    config = load_config(*args.configs)
    res = Path(args.results_dir)
    out = Path(args.out) if args.out else res / "report" / "index.html"
    summary = render_report(res / "scores.csv", out, config=config, skipped_path=res / "skipped.csv",
                            figures_dir=out.parent / "figures", data_dir=args.data_dir,
                            repo_root=Path(__file__).resolve().parents[2], configfiles=args.configs)
    print(json.dumps(summary["verdicts"], indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
