"""Tables of the page: the paper's tables with our numbers beside them, the offline-analog tables, the
cross-view groups, and why an empty cell is empty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from inbedder.fidelity_rows import MethodRow, method_notes, same_re_encoder
from inbedder.report.aggregate import SuiteScores
from inbedder.report.suites import (
    AVG,
    GEN_AVG,
    IA_AVG,
    RE_ENCODE_PREFIX,
    Cell,
    Column,
    Run,
    mode_rank,
)

# The paper's tables a comparison table shows (paper_numbers.csv, column `table`), and their titles.
PAPER_TABLES = {
    "instruction_awareness": "Instruction awareness (paper tasks)",
    "generic": "Generic embedding tasks (paper tasks)",
    "modes": "Embedding modes: the authors' released runs, instruction-awareness average (paper tasks)",
    "filtering": "Filtering ablation, instruction-awareness average (paper tasks)",
}
FILTER_WORDS_SUFFIX = "+filter=words"  # the filter of scikit-learn's stopwords (method.filter: words)
FILTER_SUFFIX = "+filter"  # the filter the run's method.filter selects


@dataclass
class CompareCell:
    """Our number beside the paper's, and the difference."""

    ours: Cell
    paper: float | None
    not_comparable: str = ""  # why ours and the paper's are not compared (a different re-encoder)

    @property
    def diff(self) -> float | None:
        """ours - paper where both exist and are comparable."""
        if not self.ours.ok or self.paper is None or self.not_comparable:
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
        self.tasks = set(scores["task"])

    def task_reason(self, task: str) -> str | None:
        """Why no run at all has the task (skipped, unavailable, not selected), or None when some run has it."""
        if task in self.tasks:
            return None
        if task in self.skipped:
            return self.skipped[task]
        if self.selected_tasks is not None and task not in self.selected_tasks:
            return "task not selected in this run"
        return "task not scored in this run"

    def reason(self, run: Run, task: str) -> str:
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


def _row_cells(book: SuiteScores, run: Run, cols: Sequence[Column], avg_key: str, reasons: MissingReasons,
               paper: Mapping[str, float] | None = None) -> list[CompareCell]:
    """The run's cells of `cols` and the average, each empty one saying why, beside the paper's values (by task)."""
    paper = paper or {}
    cells = []
    for c in cols:
        cell = book.get(run, c.label)
        cells.append(CompareCell(cell if cell.ok else Cell(reason=reasons.reason(run, c.task)), paper.get(c.task)))
    avg = book.get(run, avg_key)
    cells.append(CompareCell(avg if avg.ok else Cell(reason=avg.reason), paper.get(AVG)))
    return cells


def _run_level_reasons(cells: Sequence[CompareCell], cols: Sequence[Column], task_level: Mapping[str, str | None]
                       ) -> list[str]:
    """The reasons of a row's empty cells that are not the column's own (task-level) reason."""
    return list(dict.fromkeys(c.ours.reason for c, col in zip(cells, cols, strict=False)
                              if c.ours.reason and c.ours.reason != task_level[col.label]))


def re_encoder_note(paper_re_encoder: str, ours: str | None, models: Mapping[str, Any] | None = None) -> str:
    """Empty when this run's re-encoder is the one of the paper's row; else why the two are not compared."""
    if same_re_encoder(paper_re_encoder, ours, dict(models or {})):
        return ""
    return f"not comparable: re-encoder differs (paper: {paper_re_encoder}, this run: {ours or 'none'})"


def method_note(method: Sequence[MethodRow], table: str, run: Run) -> str:
    """"method differs: <keys>" for the switches set away from the authors' that can move this row."""
    keys = method_notes(list(method), table, run.model, run.recipe)
    return f"method differs: {', '.join(keys)}" if keys else ""


def paper_table(paper: pd.DataFrame, table: str, ours: SuiteScores, reasons: MissingReasons,
                data_notes: Mapping[str, str] | None = None, *, method: Sequence[MethodRow] = (),
                re_encoder: str | None = None, models: Mapping[str, Any] | None = None) -> TableView:
    """The paper's table (its rows and columns) with our number, the paper's and the difference per cell.

    `method`: the run's method rows (fidelity_rows.method_rows): a row with a number of ours notes the switches that
    differ from the authors' and can move this table. `re_encoder` (a name of the `models` registry): a re-encode
    row is compared only when it is the re-encoder of the paper's row (its `re_encoder` column).
    """
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; expected one of {', '.join(PAPER_TABLES)}")
    title = PAPER_TABLES[table]
    cols, avg_key = (ours.suite.generic, GEN_AVG) if table == "generic" else (ours.suite.ia, IA_AVG)
    label_of = {c.task: c.label for c in ours.suite.columns}
    sub = paper[paper["table"] == table]
    task_level = {col.label: reasons.task_reason(col.task) for col in cols}
    rows: list[TableRow] = []
    matched: set[Run] = set()
    for paper_label, grp in sub.groupby("row", sort=False):
        first = grp.iloc[0]
        paper_vals = dict(zip(grp["task"], grp["value"], strict=True))
        notes = [f"{label_of.get(t, t)}: {n}" for t, n in zip(grp["task"], grp["note"], strict=True) if n]
        candidates = [Run(first["model"], first["recipe"], first["mode"])]
        if first["recipe"] == "inbedder":
            candidates.append(candidates[0].with_(recipe="released"))
        found = [r for r in candidates if r in ours.runs]
        blocked = ""
        if str(first["mode"]).startswith(RE_ENCODE_PREFIX):
            blocked = re_encoder_note(str(first["re_encoder"]), re_encoder, models)
        for run in found or candidates[:1]:
            matched.add(run)
            cells = _row_cells(ours, run, cols, avg_key, reasons, paper_vals)
            for cell in cells:
                cell.not_comparable = blocked
            label = paper_label if run == candidates[0] else run.label
            extra_notes = [blocked] if blocked else []
            if any(c.ours.ok for c in cells):
                extra_notes += [n for n in [method_note(method, table, run)] if n]
            rows.append(TableRow(label=label, cells=cells, paper_label=paper_label, group="paper",
                                 note="; ".join(extra_notes + _run_level_reasons(cells, cols, task_level) + notes)))
    # Runs of ours without a paper row: only those with a paper-only task (not one shared with the offline
    # suite, as 20News), and only under the headline tables (the ablation tables hold the paper's rows alone).
    extra = sorted((r for r in ours.runs if r not in matched and table in ("instruction_awareness", "generic")
                    and any(ours.get(r, c.label).ok for c in cols if not c.shared)),
                   key=lambda r: r.sort_key)
    for run in extra:
        cells = _row_cells(ours, run, cols, avg_key, reasons)
        rows.append(TableRow(label=run.label, cells=cells, group="this run only",
                             note="; ".join(_run_level_reasons(cells, cols, task_level))))
    footnotes = [f"Paper numbers: {sub['source'].iloc[0]}." if len(sub) else "No paper numbers."]
    for col in cols:
        used = ours.metrics_used.get(col.label) or []
        if used:
            footnotes.append(f"{col.label} ({col.task}): metric {', '.join(used)}"
                             + (f"; {'; '.join(ours.notes[col.label])}" if ours.notes.get(col.label) else "")
                             + (f"; {data_notes[col.task]}" if data_notes and col.task in data_notes else ""))
    labels = [c.label for c in cols] + ["Avg"]
    return TableView(key=table, title=title, columns=labels, headers=labels, rows=rows, footnotes=footnotes,
                     with_paper=True,
                     missing_columns=[(c.label, task_level[c.label]) for c in cols if task_level[c.label]])


def offline_table(ours: SuiteScores, part: str, reasons: MissingReasons,
                  data_notes: Mapping[str, str] | None = None) -> TableView:
    """Our offline-analog numbers in the paper's layout (one row per model, recipe and mode)."""
    suite = ours.suite
    if part == "ia":
        cols, avg_key, title = suite.ia, IA_AVG, "Instruction awareness (offline analogs)"
    elif part == "generic":
        cols, avg_key, title = suite.generic, GEN_AVG, "Generic embedding tasks (offline analogs)"
    else:
        raise ValueError(f"unknown table part {part!r}; expected ia or generic")
    runs = sorted((r for r in ours.runs if any(ours.get(r, c.label).ok for c in cols)), key=lambda r: r.sort_key)
    task_level = {col.label: reasons.task_reason(col.task) for col in cols}
    rows: list[TableRow] = []
    for run in runs:
        cells = _row_cells(ours, run, cols, avg_key, reasons)
        row = TableRow(label=run.label, cells=cells, note="; ".join(_run_level_reasons(cells, cols, task_level)),
                       group=run.model)
        avg, base = cells[-1].ours, run.with_(recipe="none")
        if run.recipe != "none" and avg.ok and ours.get(base, avg_key).ok:
            row.delta = avg.value - ours.get(base, avg_key).value
            row.delta_ref = base.label
        rows.append(row)
    labels = [c.label for c in cols] + ["Avg"]
    best = {}
    for i, lab in enumerate(labels):
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
    return TableView(key=f"offline_{part}", title=title, columns=labels, headers=labels, rows=rows,
                     footnotes=footnotes, with_paper=False, best=best,
                     missing_columns=[(c.label, task_level[c.label]) for c in cols if task_level[c.label]])


def crossview_groups(rows: Sequence[dict], headline: Sequence[Run]) -> list[dict]:
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


def filter_ablation(book: SuiteScores, filter_setting: str) -> dict | None:
    """Per run with a `<mode>+filter=words` mode, and per task of the suite (and the IA average): the
    unfiltered `<mode>`, `<mode>+filter` (the run's `method.filter`, `filter_setting`) and `<mode>+filter=words`,
    each a Cell with its CI; None when the suite has no `+filter=words` run scored on its tasks."""
    words = sorted((r for r in book.runs if r.mode.endswith(FILTER_WORDS_SUFFIX)),
                   key=lambda r: (r.sort_key[:3], mode_rank(r.mode[: -len(FILTER_WORDS_SUFFIX)])))
    if not words:
        return None
    columns = [(c.label, c.task) for c in book.suite.ia] + [("Avg", "instruction-awareness average")]
    keys = [c.label for c in book.suite.ia] + [IA_AVG]
    rows = []
    for run in words:
        base = run.with_(mode=run.mode[: -len(FILTER_WORDS_SUFFIX)])
        variants = (base, base.with_(mode=base.mode + FILTER_SUFFIX), run)
        for (label, task), key in zip(columns, keys, strict=True):
            cells = [book.get(v, key) for v in variants]
            if not any(c.ok for c in cells):
                continue
            cells = [c if c.ok else Cell(reason=f"{v.mode} not scored") for c, v in zip(cells, variants, strict=True)]
            rows.append({"run": base.label, "column": label, "task": task, "cells": cells})
    if not rows:  # the words modes were scored on none of this suite's tasks
        return None
    return {"suite": book.suite.title, "filter": filter_setting,
            "headers": ["unfiltered", f"+filter ({filter_setting})", "+filter=words"], "rows": rows}
