"""The learning-rate sweep of a fine-tune (config `models.<m>.train.lr_sweep`): its short runs, the rate they
pick, and the sweep table.

Each rate of `lr_sweep` is a short run of `lr_sweep_steps` optimizer steps of the model on the recipe's
table, on the fine-tune's own schedule cut at that step (as `train.steps_of` cuts a run), scored by the
held-out checks at its last step. `lr_rule` picks the rate: `lowest_heldout_loss` (the held-out answer
loss, meaningful for every recipe) or `highest_heldout_token_f1`; a tie goes to the smaller rate, and a
run whose metric is missing (NaN) is never picked. The rule `lr_sweep` writes the table
(`results/<run>/lr_sweep/<model>-<recipe>.csv`: model, recipe, lr, steps, heldout_token_f1,
heldout_loss, chosen) and the fine-tune (rule `train_model`) trains with the chosen rate in place of
`learning_rate`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inbedder.config import check_block
from inbedder.files import write_text
from inbedder.vocabulary import UNTRAINED_RECIPES

SWEEP_DIR = "lr_sweep"
SWEEP_COLUMNS = ("model", "recipe", "lr", "steps", "heldout_token_f1", "heldout_loss", "chosen")
# lr_rule -> (the column it reads, whether lower is better)
LR_RULES = {
    "lowest_heldout_loss": ("heldout_loss", True),
    "highest_heldout_token_f1": ("heldout_token_f1", False),
}


@dataclass(frozen=True)
class SweepRun:
    """One short run of a learning-rate sweep."""

    model: str
    recipe: str
    lr: float
    steps: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.recipe}-lr{self.lr:g}"


def sweep_settings(train: Mapping[str, Any] | None) -> tuple[list[float], int, str] | None:
    """(rates, steps, rule) of a model's train block (its schema defaults filled in), or None: no sweep."""
    train = train or {}
    if not train.get("lr_sweep"):
        return None
    train = check_block(train, "/$defs/train", "train")  # the schema's defaults of lr_sweep_steps and lr_rule
    rates, rule = train["lr_sweep"], train["lr_rule"]
    if rule not in LR_RULES:
        raise ValueError(f"train.lr_rule {rule!r}: one of {', '.join(LR_RULES)}")
    return sorted(float(r) for r in rates), int(train["lr_sweep_steps"]), rule


def sweep_plan(models: Mapping[str, Mapping[str, Any]], recipes: Sequence[str]) -> list[SweepRun]:
    """The sweeps' short runs: each model setting `lr_sweep` x trained recipe x rate (smallest first)."""
    plan = []
    for model, spec in models.items():
        sweep = sweep_settings(spec.get("train"))
        if sweep is None:
            continue
        rates, steps, _ = sweep
        for recipe in recipes:
            if recipe not in UNTRAINED_RECIPES:
                plan += [SweepRun(model, recipe, lr, steps) for lr in rates]
    return plan


def pick_lr(results: Sequence[Mapping[str, Any]], rule: str) -> float:
    """The rate `rule` picks from short runs' results; a tie goes to the smaller rate, NaN is never picked."""
    if rule not in LR_RULES:
        raise ValueError(f"lr_rule {rule!r}: one of {', '.join(LR_RULES)}")
    column, lower = LR_RULES[rule]
    scored = []
    for row in results:
        value = row.get(column)
        value = math.nan if value is None else float(value)
        if not math.isnan(value):
            scored.append((value if lower else -value, float(row["lr"])))
    if not scored:
        raise ValueError(f"lr sweep: no run has a {column} to pick a learning rate by ({rule})")
    return min(scored)[1]  # the best value, then the smaller rate


def sweep_table(results: Sequence[Mapping[str, Any]], rule: str) -> list[dict[str, Any]]:
    """The sweep table's rows: each short run's result, by rate, with `chosen` marking the rate picked."""
    chosen = pick_lr(results, rule)
    rows = sorted(results, key=lambda r: float(r["lr"]))
    return [
        {**{c: row.get(c) for c in SWEEP_COLUMNS[:-1]}, "chosen": float(row["lr"]) == chosen} for row in rows
    ]


def write_sweep_table(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write lr_sweep.csv (model, recipe, lr, steps, heldout_token_f1, heldout_loss, chosen) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{c: _cell(row.get(c)) for c in SWEEP_COLUMNS[:-1]}, "chosen": bool(row["chosen"])})
    write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def read_chosen_lr(path: str | os.PathLike) -> float:
    """The chosen rate of a sweep table, or an error naming the file."""
    with open(path, newline="", encoding="utf-8") as fh:
        chosen = [float(r["lr"]) for r in csv.DictReader(fh) if r.get("chosen") == "True"]
    if len(chosen) != 1:
        raise ValueError(f"{path}: {len(chosen)} rows with chosen True, expected exactly one")
    return chosen[0]


def sweep_table_path(results_dir: str | os.PathLike, model: str, recipe: str) -> Path:
    """Where the sweep table of (model, recipe) goes in a run's results folder."""
    return Path(results_dir) / SWEEP_DIR / f"{model}-{recipe}.csv"


def sweep_job(job: Any, run: SweepRun) -> Any:
    """A short run's TrainJob: the fine-tune's at `run.lr`, cut at `run.steps`, no checks during training."""
    settings = replace(job.settings, learning_rate=run.lr, heldout_every=None, stop_when_flat=None)
    return replace(job, settings=settings, stop_at_step=run.steps, steps_of=None)

