"""Aggregation: per run and column a Cell (metric by preference, subsets combined, seeds averaged), the
suite averages, and the per-task views of the appendix (robustness groups, cross-view, every score)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inbedder.bootstrap import BootstrapError, Estimate, combine_mean
from inbedder.item_data import ItemData
from inbedder.report.suites import (
    AVG,
    GEN_AVG,
    IA_AVG,
    NO_SEED,
    OVERALL_SUBSETS,
    SCALE,
    Cell,
    Column,
    Run,
    Suite,
    as_int,
)
from inbedder.vocabulary import ROBUSTNESS_GROUPS


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is <= 0 (as for a score of nothing)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("harmonic mean of nothing")
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample sd (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def column_cells(scores: pd.DataFrame, column: Column, items: ItemData | None = None) -> dict[Run, Cell]:
    """Aggregate one column for every run that has it: metric by preference, subsets combined, seeds averaged,
    and the bootstrap CI (items and seeds resampled) where per-item data exists."""
    task_rows = scores[(scores["task"] == column.task) & scores["value"].notna()]
    out: dict[Run, Cell] = {}
    for run, grp in task_rows.groupby(["model", "recipe", "mode"], sort=False):
        metric = next((m for m in column.metrics if (grp["metric"] == m).any()), None)
        if metric is None:
            continue
        rows = grp[grp["metric"] == metric]
        per_seed, note = per_seed_values(rows, column.combine)
        if per_seed.empty:
            continue
        mean, sd = mean_sd(per_seed.to_numpy(dtype=float) * SCALE)
        cell = Cell(value=mean, sd=sd, n_seeds=count_seed_units(rows), metric=metric, note=note)
        cell.est, cell.ci_reason = cell_estimate(items, Run(*run), column, rows, mean)
        out[Run(*run)] = cell
    return out


def seed_units(rows: pd.DataFrame) -> pd.Series:
    """Each row's seed unit as one integer code: its (training seed, k-means seed) pair, factorised."""
    codes, _ = pd.factorize(pd.Series(list(zip(rows["train_seed"], rows["seed"], strict=True)), index=rows.index))
    return pd.Series(codes, index=rows.index, name="unit")


def count_seed_units(rows: pd.DataFrame) -> int:
    """Distinct (training seed, k-means seed) units among rows, not counting rows with neither."""
    pairs = rows[["train_seed", "seed"]].drop_duplicates()
    return int(((pairs["train_seed"] != NO_SEED) | (pairs["seed"] != NO_SEED)).sum())


def per_seed_values(rows: pd.DataFrame, combine: str) -> tuple[pd.Series, str]:
    """One value per seed unit (training seed x k-means seed) for a run's rows of one metric, and a note on
    how subsets were combined."""
    rows = rows.assign(unit=seed_units(rows))
    subsets = list(dict.fromkeys(rows["subset"]))
    by_subset = rows.groupby(["unit", "subset"])["value"].mean()
    if combine == "hmean":
        if "hmean" in subsets:
            return rows[rows["subset"] == "hmean"].groupby("unit")["value"].mean(), ""
        parts = by_subset.drop("hmean", level="subset", errors="ignore")
        if parts.index.get_level_values("subset").nunique() < 2:
            return pd.Series(dtype=float), ""
        names = sorted(set(parts.index.get_level_values("subset")))
        return (parts.groupby(level="unit").agg(lambda s: hmean(s.tolist())),
                "harmonic mean computed by the report from " + ", ".join(names))
    chosen = next((s for s in OVERALL_SUBSETS if s in subsets), None)
    if chosen is None and len(subsets) == 1:
        chosen = subsets[0]
    if chosen is not None:
        return rows[rows["subset"] == chosen].groupby("unit")["value"].mean(), ""
    return by_subset.groupby(level="unit").mean(), "mean over subsets " + ", ".join(sorted(subsets))


def combine_plan(rows: pd.DataFrame, combine: str) -> tuple[str, list[str]]:
    """How a column's subsets make its number (as per_seed_values does): (`hmean` | `one` | `mean`, subsets)."""
    subsets = list(dict.fromkeys(rows["subset"]))
    if combine == "hmean":
        return "hmean", [s for s in subsets if s != "hmean"]
    chosen = next((s for s in OVERALL_SUBSETS if s in subsets), None)
    if chosen is None and len(subsets) == 1:
        chosen = subsets[0]
    return ("one", [chosen]) if chosen is not None else ("mean", subsets)


def cell_estimate(items: ItemData | None, run: Run, column: Column, rows: pd.DataFrame, value: float,
                  ) -> tuple[Estimate | None, str]:
    """The bootstrap estimate (x100) of a cell whose point value is `value`, or None and why not."""
    if not items:
        return None, "no per-item data in this run"
    layers = {as_int(x) for x in rows["layer"]}
    if len(layers) != 1 or None in layers:
        return None, f"more than one layer: {sorted(set(rows['layer']))}"
    how, subsets = combine_plan(rows, column.combine)
    metric = rows["metric"].iloc[0]
    layer = layers.pop()
    keys = [(run.model, run.recipe, column.task, run.mode, layer, s, metric) for s in subsets]
    try:
        return items.estimate(keys, how, value / SCALE).scaled(SCALE), ""
    except BootstrapError as err:
        return None, str(err)


def average_cell(cells: Sequence[Cell], labels: Sequence[str]) -> Cell:
    """Mean of cells (sd combined as independent errors; CI from the mean of their replicates); missing when any
    part is missing."""
    missing = [lab for lab, c in zip(labels, cells, strict=True) if not c.ok]
    if missing:
        return Cell(reason="missing " + ", ".join(missing))
    vals = [c.value for c in cells]
    sd = math.sqrt(sum(c.sd**2 for c in cells)) / len(cells)
    cell = Cell(value=float(np.mean(vals)), sd=sd, n_seeds=max(c.n_seeds for c in cells))
    no_ci = [lab for lab, c in zip(labels, cells, strict=True) if c.est is None]
    if no_ci:
        why = next(c.ci_reason for c in cells if c.est is None)
        cell.ci_reason = f"no CI for {', '.join(no_ci)}" + (f" ({why})" if why else "")
    else:
        cell.est = combine_mean([c.est for c in cells])
    return cell


@dataclass
class SuiteScores:
    """Per run of a suite: a Cell per column label plus the two averages (IA, GEN)."""

    suite: Suite
    runs: dict[Run, dict[str, Cell]]
    metrics_used: dict[str, list[str]]
    notes: dict[str, list[str]]
    point_only: bool = False  # numbers without CIs (the paper's own)

    def get(self, run: Run, label: str) -> Cell:
        """The cell of a run and column (an empty cell when absent)."""
        return self.runs.get(run, {}).get(label, Cell())


def suite_scores(scores: pd.DataFrame, suite: Suite, items: ItemData | None = None) -> SuiteScores:
    """Cells of every run with at least one score in the suite, and the IA / generic averages, with CIs where
    `items` holds the per-item data."""
    per_col = {c.label: column_cells(scores, c, items) for c in suite.ia + suite.generic}
    runs: dict[Run, dict[str, Cell]] = {}
    for label, cells in per_col.items():
        for run, cell in cells.items():
            runs.setdefault(run, {})[label] = cell
    metrics_used = {label: sorted({c.metric for c in cells.values()}) for label, cells in per_col.items()}
    notes = {label: sorted({c.note for c in cells.values() if c.note}) for label, cells in per_col.items()}
    ia_labels = [c.label for c in suite.ia]
    gen_labels = [c.label for c in suite.generic]
    for cells in runs.values():
        cells[IA_AVG] = average_cell([cells.get(lab, Cell()) for lab in ia_labels], ia_labels)
        cells[GEN_AVG] = average_cell([cells.get(lab, Cell()) for lab in gen_labels], gen_labels)
    return SuiteScores(suite=suite, runs=runs, metrics_used=metrics_used, notes=notes)


def paper_suite_scores(paper: pd.DataFrame, suite: Suite) -> SuiteScores:
    """The paper's own numbers arranged like our scores (the paper suite's columns, IA and GEN averages)."""
    runs: dict[Run, dict[str, Cell]] = {}
    order = {"instruction_awareness": 0, "generic": 0, "modes": 1, "filtering": 1}
    labels = {c.task: c.label for c in suite.columns}
    for row in sorted(paper.itertuples(index=False), key=lambda r: order.get(r.table, 2)):
        col = labels.get(row.task, row.task)
        if row.task == AVG:
            col = GEN_AVG if row.table == "generic" else IA_AVG
        cells = runs.setdefault(Run(row.model, row.recipe, row.mode), {})
        if col not in cells:  # headline tables win over the ablation rows
            cells[col] = Cell(value=float(row.value), note=row.note)
    return SuiteScores(suite=suite, runs=runs, metrics_used={}, notes={}, point_only=True)


def headline_runs(book: SuiteScores, claim_mode: Callable[[str, str], str | None] | None = None) -> list[Run]:
    """One run per (model, recipe): the mode the claims compare it at (`claim_mode(model, recipe)`, the config's
    claim_modes) where that run exists, else its best IA mode (generic average where no IA); encoders per mode."""

    def score(run: Run) -> float:
        cells = book.runs[run]
        if cells.get(IA_AVG, Cell()).ok:
            return cells[IA_AVG].value
        if cells.get(GEN_AVG, Cell()).ok:
            return cells[GEN_AVG].value - 1000.0
        return -1e9

    best: dict[tuple[str, str], Run] = {}
    for run in book.runs:
        key = (run.model, run.recipe + run.mode if run.encoder else run.recipe)
        fixed = None if run.encoder or claim_mode is None else claim_mode(run.model, run.recipe)
        if fixed is not None and run.with_(mode=fixed) in book.runs:
            best[key] = run.with_(mode=fixed)
        elif key not in best or score(run) > score(best[key]):
            best[key] = run
    return sorted(best.values(), key=lambda r: r.sort_key)


# ----------------------------------------------------------------------------------------------------------
# Per-task views: robustness groups, cross-view diagnostics, every score
# ----------------------------------------------------------------------------------------------------------


def train_seed_spread(scores: pd.DataFrame, suite: Suite, runs: Sequence[Run]) -> list[dict]:
    """The spread across training seeds of each given run fine-tuned under more than one seed: its IA and
    generic averages per training seed, their mean and sd (the authors trained one seed per model)."""
    out = []
    for run in runs:
        mine = scores[(scores["model"] == run.model) & (scores["recipe"] == run.recipe)
                      & (scores["mode"] == run.mode)]
        seeds = sorted(s for s in set(mine["train_seed"]) if s != NO_SEED)
        if len(seeds) < 2:
            continue
        books = {s: suite_scores(mine[mine["train_seed"] == s], suite) for s in seeds}
        for label in (IA_AVG, GEN_AVG):
            cells = [books[s].get(run, label) for s in seeds]
            if not all(c.ok for c in cells):
                continue
            values = [c.value for c in cells]
            mean, sd = mean_sd(np.array(values))
            out.append({"run": run, "label": run.label, "column": label, "seeds": seeds, "values": values,
                        "mean": mean, "sd": sd, "range": max(values) - min(values)})
    return out


def robustness_group(subset: str) -> str | None:
    """The instruction group of a robustness subset (`correct/03`, `implicit`, ...), or None."""
    s = subset.lower()
    for g in ("incorrect", "implicit", "correct"):  # "incorrect" before "correct"
        if s == g or s.startswith(tuple(g + sep for sep in ":_-/")):
            return g
    return None


def robustness_rows(scores: pd.DataFrame) -> list[dict]:
    """Per robustness task and run: mean (sd) V-measure per instruction group, and dci / dii.

    Groups come from the per-instruction rows (metric `v_measure`, subset `correct/03`, ...) when present,
    else from the per-group means (metric `v_measure_mean`, subset `correct`, ...).
    """
    groups = scores["subset"].map(robustness_group)
    d = scores[groups.notna() & scores["value"].notna() & ~scores["metric"].isin(("dci", "dii"))].copy()
    d["group"] = groups[groups.notna()]
    d["is_mean"] = d["metric"].str.startswith("mean_") | d["metric"].str.endswith("_mean")
    deltas = scores[scores["metric"].isin(("dci", "dii")) & scores["value"].notna()]
    key_cols = ["task", "model", "recipe", "mode"]
    keys = {tuple(k) for frame in (d, deltas) for k in frame[key_cols].itertuples(index=False)}
    by_key = dict(list(d.groupby(key_cols)))
    delta_of = deltas.groupby(key_cols + ["metric"])["value"].mean()
    out = []
    for task, model, recipe, mode in sorted(keys, key=lambda k: (k[0], Run(*k[1:]).sort_key)):
        run = Run(model, recipe, mode)
        rd = by_key.get((task, model, recipe, mode), d.iloc[:0])
        row = {"task": task, "run": run, "label": run.label, "groups": {}}
        for g in ROBUSTNESS_GROUPS:
            gd = rd[rd["group"] == g]
            vals = gd.loc[~gd["is_mean"], "value"].to_numpy(dtype=float) * SCALE
            if vals.size == 0:
                vals = gd.loc[gd["is_mean"], "value"].to_numpy(dtype=float) * SCALE
            if vals.size:
                row["groups"][g] = (*mean_sd(vals), int(vals.size))
        for metric in ("dci", "dii"):
            v = delta_of.get((task, model, recipe, mode, metric))
            row[metric] = float(v) * SCALE if v is not None else None
        out.append(row)
    return out


def crossview_table(scores: pd.DataFrame) -> list[dict]:
    """Two-view diagnostics, one row per task and run: per view, the score on its own labels and on the other's."""
    cross = scores[scores["metric"].str.endswith("_crossview") & scores["value"].notna()]
    means = scores.groupby(["task", "model", "recipe", "mode", "metric", "subset"])["value"].mean()
    out = []
    for (task, model, recipe, mode), grp in cross.groupby(["task", "model", "recipe", "mode"], sort=True):
        base_metric = grp["metric"].iloc[0][: -len("_crossview")]
        views = []
        for subset, sgrp in grp.groupby("subset", sort=True):
            own = means.get((task, model, recipe, mode, base_metric, subset))
            own_v = float(own) * SCALE if own is not None and not np.isnan(own) else None
            cross_v = float(sgrp["value"].mean()) * SCALE
            views.append({"view": subset, "own": own_v, "cross": cross_v,
                          "gap": own_v - cross_v if own_v is not None else None})
        run = Run(model, recipe, mode)
        out.append({"task": task, "run": run, "label": run.label, "metric": base_metric, "views": views})
    out.sort(key=lambda r: (r["task"], r["run"].sort_key))
    return out


def long_table(scores: pd.DataFrame, items: ItemData | None = None) -> list[dict]:
    """Every score, seeds averaged, with its CI (items resampled, the seeds' spread added; scores.csv's own
    bounds for a single-seed row without per-item data): the appendix table."""
    keys = ["task", "model", "recipe", "mode", "layer", "subset", "metric"]
    subsets_of = scores.groupby(["task", "model", "recipe", "mode", "layer", "metric"])["subset"].unique()
    out = []
    for key, grp in scores.groupby(keys, sort=True):
        vals = grp["value"].dropna().to_numpy(dtype=float) * SCALE
        if vals.size == 0:
            continue
        n = grp["n"].dropna()
        row = dict(zip(keys, key, strict=True)) | {
            "mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if vals.size > 1 else None,
            "n_seeds": count_seed_units(grp), "n": int(n.iloc[0]) if len(n) else None,
            "low": None, "high": None, "few": False}
        task, model, recipe, mode, layer, subset, metric = key
        item_key = (model, recipe, task, mode, as_int(layer), subset, metric)
        parts, how = [item_key], "one"
        if subset == "hmean":
            others = [s for s in subsets_of[(task, model, recipe, mode, layer, metric)] if s != "hmean"]
            parts, how = [(model, recipe, task, mode, as_int(layer), s, metric) for s in others], "hmean"
        if items and all(p in items for p in parts):
            try:
                est = items.estimate(parts, how, row["mean"] / SCALE).scaled(SCALE)
                row.update(low=est.low, high=est.high, few=est.few_items)
            except BootstrapError:
                pass
        elif len(grp) == 1 and "ci_low" in grp.columns and grp["ci_low"].notna().all():
            row.update(low=float(grp["ci_low"].iloc[0]) * SCALE, high=float(grp["ci_high"].iloc[0]) * SCALE)
        out.append(row)
    return out


def clustering_tasks(scores: pd.DataFrame) -> list[str]:
    """Tasks scored by V-measure (not the cross-view diagnostics, not robustness groups)."""
    v = scores[(scores["metric"] == "v_measure") & scores["value"].notna()]
    v = v[~v["subset"].map(robustness_group).notna()]
    return sorted(set(v["task"]))


FLOOR_METRICS = ("success_rate", "v_measure", "spearman")  # the per-view instruction-awareness metrics


def below_floor(long: Sequence[dict], control_mode: str) -> list[dict]:
    """Per task, view and run: where a run's score on one view lies wholly below the interval of the
    instruction-blind negative control (a sentence encoder in `control_mode`) on that view: such a run follows
    the other view whatever the instruction (appendix rows of `long_table`, seeds averaged)."""
    controls = {(r["task"], r["subset"], r["metric"]): r for r in long
                if r["mode"] == control_mode and r["recipe"] == "none" and r["low"] is not None}
    out = []
    for r in long:
        floor = controls.get((r["task"], r["subset"], r["metric"]))
        if (floor is None or r["metric"] not in FLOOR_METRICS or r["mode"] == control_mode or r["high"] is None
                or r["subset"] in ("hmean", "all")):
            continue
        if r["high"] < floor["low"]:
            run = Run(r["model"], r["recipe"], r["mode"])
            out.append({"task": r["task"], "view": r["subset"], "label": run.label, "mean": r["mean"],
                        "low": r["low"], "high": r["high"], "floor": f"{floor['model']} ({control_mode})",
                        "floor_low": floor["low"], "floor_high": floor["high"]})
    return out
