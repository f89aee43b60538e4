"""The held-out check of a fine-tune: answer token F1 and answer loss, their curve over training, the plateau.

`heldout_f1` scores greedy answers to held-out questions (token F1 against the references) and
`heldout_loss` the mean token cross-entropy of the references' answer tokens, teacher-forced with the
training target and collation; both run before, during and after training. A recipe is judged by one
of them (`recipes.<name>.heldout_metric`: `token_f1`, higher is better, or `loss`, lower is better):
the plateau rule and the model kept (`inbedder.train_best`) read that one. `HeldoutCurve` holds the
curve (`heldout_curve.csv`: step, heldout_token_f1, seconds of the check, heldout_loss): step 0 before
training, every `heldout_every` optimizer steps
(a Trainer callback at `on_step_end`, independent of `save_steps`) and the final step. A check runs
in eval mode and puts back the training mode and every RNG state (`training_untouched`), so a run
with checks trains exactly as one without. During training the curve is kept beside the checkpoints
and each point is written (atomically) before the checkpoint of its step, so a rerun that resumes
from `checkpoint-N` keeps the points with step <= N and recomputes the rest. `stop_when_flat` ends
training once the curve has not risen by more than `min_delta` over its best for `patience`
consecutive checks (`plateau`; for the loss: has not fallen by more than `min_delta` below its best).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.answering import generate_answers
from inbedder.files import write_text
from inbedder.model_kinds import kind_of
from inbedder.text import token_f1
from inbedder.tokens import IGNORE_INDEX
from inbedder.train_data import Collator, encode_example, eos_id, training_prompt
from inbedder.train_loop import answer_only_loss

CURVE = "heldout_curve.csv"
BEFORE_FILE = "heldout_before.json"
# the held-out metrics a recipe may be judged by: its key in a curve point, and whether lower is better
METRICS = {"token_f1": ("f1", False), "loss": ("loss", True)}
log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# config keys


@dataclass(frozen=True)
class StopWhenFlat:
    """Config `train.stop_when_flat`: stop once the held-out token F1 (0-1, as in the summary) has not
    risen by more than `min_delta` over its best for `patience` consecutive curve points; `recipes`
    limits the rule to those recipes (None: every recipe), the others train to their step budget."""

    patience: int
    min_delta: float
    recipes: tuple[str, ...] | None

    def applies_to(self, recipe: str) -> bool:
        return self.recipes is None or recipe in self.recipes


def check_heldout_keys(heldout_every: Any, stop_when_flat: Any, where: str) -> StopWhenFlat | None:
    """A train block's `stop_when_flat` as a StopWhenFlat; it needs `heldout_every` (beyond the schema)."""
    stop = stop_when_flat
    if isinstance(stop, Mapping):
        recipes = stop["recipes"]
        recipes = None if recipes is None else tuple(recipes)
        stop = StopWhenFlat(stop["patience"], float(stop["min_delta"]), recipes)
    if stop is not None and heldout_every is None:
        raise ValueError(
            f"{where}.stop_when_flat: needs {where}.heldout_every (the held-out F1 is checked every "
            "heldout_every steps; the plateau is found on those checks), which is null"
        )
    return stop


# ----------------------------------------------------------------------------------------------
# held-out check


def heldout_f1(
    model, tokenizer, job: Any, rows: Sequence[Mapping[str, str]], autocast: str | None
) -> tuple[float, list[str]]:
    """Mean token F1 of greedy answers to held-out questions, and the answers themselves (`job`: an
    `inbedder.train_settings.TrainJob`, for its template, model kind and answer length)."""
    prompts = [training_prompt(job.template, r["instruction"], r["input"]) for r in rows]
    model.eval()
    answers = generate_answers(
        model,
        tokenizer,
        job.kind,
        prompts,
        max_new_tokens=job.max_new_tokens,
        batch_size=16,
        autocast_dtype=autocast,
    )
    scores = [token_f1(a, r["output"]) for a, r in zip(answers, rows)]
    return (sum(scores) / len(scores) if scores else float("nan")), answers


def heldout_loss(model, tokenizer, job: Any, rows: Sequence[Mapping[str, str]], autocast: str | None,
                 max_length: int, batch_size: int = 8) -> float:
    """Mean token cross-entropy of the held-out answers, teacher-forced as in training."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)
    collate = Collator(pad_id)
    examples = [
        encode_example(tokenizer, job.kind, job.template, r, max_length, train_target=job.train_target,
                       train_answer_cut=job.train_answer_cut)
        for r in rows
    ]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad(), _autocast(device, autocast):
            done = answer_only_loss(model, batch) if kind_of(job.kind).answer_only_loss else None
            if done is None:
                labels = batch["labels"][:, 1:] if kind_of(job.kind).shifts_labels else batch["labels"]
                done = model(**batch).loss, int((labels != IGNORE_INDEX).sum())
        loss, tokens = done
        total += float(loss) * tokens
        count += tokens
    return total / count if count else float("nan")


def _autocast(device, dtype: str | None):
    """torch autocast in `dtype` on `device`'s type, or nothing when `dtype` is None."""
    import torch

    return torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype else contextlib.nullcontext()


@contextlib.contextmanager
def training_untouched(model):
    """Run a check inside training: the model's train/eval mode and every RNG state are put back."""
    import numpy as np
    import torch

    was_training = model.training
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        model.train(was_training)


# ----------------------------------------------------------------------------------------------
# the held-out curve and the plateau


@dataclass(frozen=True)
class Plateau:
    """Where a held-out curve stands under the plateau rule."""

    stop: bool  # the last `patience` points improved by no more than min_delta on the best before them
    best_step: int  # the point that set the best: the last one to improve by more than min_delta
    best_value: float  # its value of the metric
    flat_steps: tuple[int, ...]  # the points since then


def better(value: float, best: float, metric: str, min_delta: float = 0.0) -> bool:
    """Whether `value` of `metric` improves on `best` by more than `min_delta` (any number beats a NaN)."""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best - min_delta if METRICS[metric][1] else value > best + min_delta


def plateau(
    points: Sequence[Mapping[str, Any]],
    patience: int | None,
    min_delta: float = 0.0,
    metric: str = "token_f1",
) -> Plateau:
    """Apply the plateau rule to curve points (sorted by step; the first is step 0).

    A point sets a new best when its `metric` improves on the best so far by more than `min_delta`
    (F1 rises, loss falls); the curve is flat (`stop`) once `patience` consecutive points after the
    best did not. `patience` None: never stop (the best is then the highest F1 or lowest loss, the
    first to reach it when min_delta is 0).
    """
    if not points:
        raise ValueError("plateau: the held-out curve has no point")
    key = METRICS[metric][0]
    best_step, best = int(points[0]["step"]), float(points[0].get(key, math.nan))
    flat: list[int] = []
    for point in points[1:]:
        value = float(point.get(key, math.nan))
        if better(value, best, metric, min_delta):
            best_step, best, flat = int(point["step"]), value, []
        else:
            flat.append(int(point["step"]))
    stop = patience is not None and len(flat) >= patience
    return Plateau(stop=stop, best_step=best_step, best_value=best, flat_steps=tuple(flat))


def add_point(points: Sequence[Mapping[str, Any]], point: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The curve with `point` added (replacing a point of the same step), sorted by step."""
    kept = {int(p["step"]): dict(p) for p in points}
    kept[int(point["step"])] = dict(point)
    return [kept[s] for s in sorted(kept)]


def curve_until(points: Sequence[Mapping[str, Any]], step: int) -> list[dict[str, Any]]:
    """The points of a curve up to `step` (a resumed run keeps those of its checkpoint's past)."""
    return [dict(p) for p in sorted(points, key=lambda p: int(p["step"])) if int(p["step"]) <= step]


def read_curve(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The points of a heldout_curve.csv ([] when there is none; a bad row is an error naming the file)."""
    path = Path(path)
    if not path.exists():
        return []
    points = []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), 2):
            try:
                seconds, loss = row.get("seconds") or "", row.get("heldout_loss") or ""
                points.append(
                    {
                        "step": int(row["step"]),
                        "f1": float(row["heldout_token_f1"]),
                        "seconds": float(seconds) if seconds else None,
                        "loss": float(loss) if loss else math.nan,  # a curve written before the loss
                    }
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{lineno}: not a held-out curve row ({err})") from err
    return sorted(points, key=lambda p: p["step"])


def write_curve(path: str | os.PathLike, points: Sequence[Mapping[str, Any]]) -> None:
    """Write heldout_curve.csv (step, heldout_token_f1, seconds of the check, heldout_loss) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "heldout_token_f1", "seconds", "heldout_loss"])
    for p in points:
        seconds, loss = p.get("seconds"), float(p.get("loss", math.nan))
        writer.writerow([
            int(p["step"]),
            f"{float(p['f1']):.6f}",
            "" if seconds is None else f"{seconds:.2f}",
            "" if math.isnan(loss) else f"{loss:.6f}",
        ])
    write_text(path, buf.getvalue())


class HeldoutCurve:
    """The held-out curve of one run: its points (written to `path` at each change), the checks run
    by this process (their seconds, the answers of the last), the metric the run is judged by, and the
    plateau rule when it applies. `on_check(step)`, when set, runs after each check inside training."""

    def __init__(
        self, path: Path, every: int | None, stop: StopWhenFlat | None, check, metric: str = "token_f1"
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"held-out metric {metric!r}: one of {', '.join(METRICS)}")
        self.path, self.every, self.stop, self._check, self.metric = path, every, stop, check, metric
        self.points: list[dict[str, Any]] = []
        self.checks: list[tuple[int, float]] = []  # (step, seconds) of the checks run in this process
        self.answers: dict[int, list[str]] = {}  # the answers of the last check, by its step
        self.stopped: Plateau | None = None
        self.on_check = None

    def start(self, kept: Sequence[Mapping[str, Any]], before: Mapping[str, Any]) -> None:
        """Start from the kept points (a resumed run's past) and the check before training (step 0)."""
        self.points = add_point([p for p in kept if int(p["step"]) > 0], before)
        write_curve(self.path, self.points)

    def add(self, point: Mapping[str, Any]) -> None:
        self.points = add_point(self.points, point)
        write_curve(self.path, self.points)

    def check(self, step: int) -> tuple[float, list[str]]:
        """Score the model as it is now, as the curve's point at `step` (F1, answers, loss if given)."""
        started = time.perf_counter()
        f1, answers, *loss = self._check()
        seconds = time.perf_counter() - started
        self.checks.append((step, seconds))
        self.answers = {step: answers}
        loss = float(loss[0]) if loss else math.nan
        self.add({"step": step, "f1": f1, "seconds": seconds, "loss": loss})
        log.info("held-out token F1 at step %d: %.4f, loss %.4f (%.1f s)", step, f1, loss, seconds)
        return f1, answers

    def value(self, step: int) -> float:
        """The run's metric at the curve's point of `step`."""
        key = METRICS[self.metric][0]
        return next(float(p.get(key, math.nan)) for p in self.points if int(p["step"]) == step)

    def plateau(self) -> Plateau:
        """The plateau rule on the curve now (without a stop rule: never stopping, min_delta 0)."""
        if self.stop is None:
            return plateau(self.points, None, metric=self.metric)
        return plateau(self.points, self.stop.patience, self.stop.min_delta, self.metric)


def curve_callback(curve: HeldoutCurve):
    """Trainer callback: a held-out check every `curve.every` steps, and the stop once the curve is flat."""
    from transformers import TrainerCallback

    class HeldoutCheck(TrainerCallback):
        """Checks after the step's update, before its checkpoint (on_step_end comes first)."""

        def on_train_begin(self, args, state, control, **kwargs):
            if curve.stop is not None and curve.plateau().stop:
                log.warning("the held-out curve kept from step %d is already flat", state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if not curve.every or step % curve.every or step >= state.max_steps:
                return  # the final step is checked after training
            curve.check(step)
            if curve.on_check is not None:
                curve.on_check(step)
            if curve.stop is not None:
                flat = curve.plateau()
                if flat.stop:
                    log.info(
                        "held-out %s flat since step %d (best %.4f; steps %s): stopping at step %d",
                        curve.metric,
                        flat.best_step,
                        flat.best_value,
                        list(flat.flat_steps),
                        step,
                    )
                    curve.stopped = flat
                    control.should_training_stop = True
                    # No checkpoint of the stopping step: a rerun after a kill resumes before it,
                    # replays the same steps and checks, and stops here again.
                    control.should_save = False

    return HeldoutCheck()


def stop_reason(curve: HeldoutCurve, settings: Any, steps: int, steps_of: str | None = None) -> str:
    """Why training ended, in words (`settings`: the run's `train_settings.TrainSettings`; `steps_of`:
    the run whose final step this one ended at, config `train.steps_of`)."""
    if steps_of is not None:
        return f"steps_of: stopped at step {steps}, where {steps_of} ended (the same number of steps)"
    if curve.stopped is not None:
        flat, stop = curve.stopped, curve.stop
        moved = "fell by no more than" if METRICS[curve.metric][1] else "rose by no more than"
        what = "token F1" if curve.metric == "token_f1" else curve.metric
        return (
            f"stop_when_flat: the held-out {what} {moved} {stop.min_delta:g} "
            f"{'below' if METRICS[curve.metric][1] else 'over'} its best "
            f"({flat.best_value:.4f} at step {flat.best_step}) at {len(flat.flat_steps)} consecutive checks "
            f"(steps {', '.join(map(str, flat.flat_steps))}; patience {stop.patience})"
        )
    budget = (
        f"max_steps reached ({steps})"
        if settings.max_steps
        else f"{settings.epochs:g} epoch(s) done ({steps} steps)"
    )
    if curve.stop is not None:
        what = "F1" if curve.metric == "token_f1" else curve.metric
        budget += (
            f" before the held-out {what} went flat (stop_when_flat: patience {curve.stop.patience}, "
            f"min_delta {curve.stop.min_delta:g})"
        )
    return budget
