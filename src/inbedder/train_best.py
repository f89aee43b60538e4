"""The model a fine-tune keeps: its best held-out check by the recipe's metric, not merely its last step.

A check during training (`train.heldout_every`) whose metric (`recipes.<name>.heldout_metric`) improves
on the best so far saves the weights and the check's answers as `checkpoints/best-<step>/`, confirmed
by the checkpoint marker once written (`inbedder.checkpoints`). The model before training (step 0) is
no candidate. When training ends (stopped flat or at its step budget), the final step is checked and
kept when it is at least as good as the best folder (a tie keeps the final weights, no reload), else the
best folder's weights are loaded back into the model before it is saved. A rerun that resumes from
`checkpoint-N` replays the steps after N: the best folders after N are dropped, and the best among the
curve's points up to N is the newest best folder up to N. So that this folder survives, a best folder
up to the newest complete checkpoint is deleted only when a newer one (up to it) exists.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.checkpoints import checkpoint_fault, mark_checkpoint_complete, scan_checkpoints
from inbedder.heldout import HeldoutCurve, better

BEST_PREFIX = "best-"
BEST_WEIGHTS = "model.safetensors"
BEST_ANSWERS = "heldout_answers.json"
log = logging.getLogger("inbedder.train")


@dataclass(frozen=True)
class Kept:
    """The check whose model a run keeps: its step, the metric's name and value, and its answers."""

    step: int
    metric: str
    value: float
    answers: list[str]


def _step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def best_folders(folder: Path) -> list[Path]:
    """The `best-<step>` folders of a checkpoint folder, by step."""
    found = folder.glob(f"{BEST_PREFIX}*") if folder.is_dir() else []
    return sorted((p for p in found if p.name.rsplit("-", 1)[-1].isdigit()), key=_step_of)


def prune_best(folder: Path, checkpoint_step: int) -> None:
    """Delete the best folders a resume can no longer need: those up to `checkpoint_step` but the newest."""
    upto = [p for p in best_folders(folder) if _step_of(p) <= checkpoint_step]
    for old in upto[:-1]:
        shutil.rmtree(old, ignore_errors=True)


class BestKeeper:
    """Saves the weights of each improving check of one run, and picks the model to keep at the end."""

    def __init__(self, folder: Path, curve: HeldoutCurve, model) -> None:
        self.folder, self.curve, self.model = folder, curve, model
        self.best: tuple[int, float] | None = None  # (step, value) of the best saved check

    def start(self, resumed_from: int) -> None:
        """Drop the best folders after the resume point; the best up to it is the newest folder kept."""
        for later in best_folders(self.folder):
            if _step_of(later) > resumed_from:
                shutil.rmtree(later)
        self.best = None
        kept = [p for p in best_folders(self.folder) if checkpoint_fault(p) is None]
        if kept:
            step = _step_of(kept[-1])
            self.best = (step, self.curve.value(step) if self._on_curve(step) else math.nan)
            if math.isnan(self.best[1]):
                log.warning("%s: best check %d not on the curve; not a candidate", self.folder, step)
                self.best = None
        if self.best:
            step, value = self.best
            log.info("best held-out %s so far: %.4f at step %d", self.curve.metric, value, step)

    def _on_curve(self, step: int) -> bool:
        return any(int(p["step"]) == step for p in self.curve.points)

    def on_check(self, step: int) -> None:
        """After the check of `step` inside training: save the weights when it is the best so far."""
        from safetensors.torch import save_model

        value = self.curve.value(step)
        if self.best is not None and not better(value, self.best[1], self.curve.metric):
            return
        if self.best is None and math.isnan(value):
            return
        target = self.folder / f"{BEST_PREFIX}{step}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        save_model(self.model, str(target / BEST_WEIGHTS))
        answers = self.curve.answers.get(step, [])
        (target / BEST_ANSWERS).write_text(json.dumps({"step": step, "answers": answers}), encoding="utf-8")
        mark_checkpoint_complete(target)
        self.best = (step, value)
        for old in best_folders(self.folder):
            if _step_of(old) < step and _step_of(old) > self._newest_checkpoint():
                shutil.rmtree(old)  # no resume point lies between it and this better one
        log.info("best held-out %s so far: %.4f at step %d (saved)", self.curve.metric, value, step)

    def _newest_checkpoint(self) -> int:
        complete = scan_checkpoints(self.folder).complete
        return _step_of(complete) if complete else 0

    def keep(self, final_step: int) -> Kept:
        """The model kept after the final check: the final one unless a saved check beats it (then loaded)."""
        from safetensors.torch import load_model

        final = self.curve.value(final_step)
        metric = self.curve.metric
        if self.best is None or self.best[0] == final_step or not better(self.best[1], final, metric):
            return Kept(final_step, metric, final, self.curve.answers[final_step])
        step, value = self.best
        folder = self.folder / f"{BEST_PREFIX}{step}"
        load_model(self.model, str(folder / BEST_WEIGHTS), device=str(next(self.model.parameters()).device))
        answers = json.loads((folder / BEST_ANSWERS).read_text(encoding="utf-8"))["answers"]
        log.info("keeping the model of step %d (held-out %s %.4f; final step %d: %.4f)",
                 step, metric, value, final_step, final)
        return Kept(step, metric, value, answers)


def best_callback(keeper: BestKeeper) -> Any:
    """Trainer callback: after each checkpoint is confirmed, prune the best folders it makes needless."""
    from transformers import TrainerCallback

    class PruneBest(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            complete = scan_checkpoints(keeper.folder).complete
            if complete is not None:
                prune_best(keeper.folder, _step_of(complete))

    return PruneBest()

